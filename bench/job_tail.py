"""Where a backup job's time went, from a stack's logs (bench.e2e_s3 --keep DIR).

    .venv/bin/python -m bench.job_tail DIR/s3-0 [DIR/local-0 ...]

Per work directory (its ``logs/*.log``, JSON lines): the job (job_started to
job_finished), the tasks (first to last proxy task_done), the tail (last task_done to
job_finished: the commits and what they wait for), the first writer commit and each
quiet seal after the last task (negative: before it).
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path


def events(work: Path) -> list[tuple[float, str, str]]:
    rows: list[tuple[float, str, str]] = []
    for log in sorted((work / "logs").glob("*.log")):
        for line in log.read_text(errors="replace").splitlines():
            try:
                d = json.loads(line)
            except ValueError:
                continue
            if isinstance(d, dict) and "timestamp" in d:
                t = datetime.fromisoformat(d["timestamp"].replace("Z", "+00:00")).timestamp()
                rows.append((t, str(d.get("role")), str(d.get("event"))))
    return sorted(rows)


def summary(work: Path) -> str:
    rows = events(work)

    def at(event: str, role: str | None = None) -> list[float]:
        return [t for t, r, e in rows if e == event and (role is None or r == role)]

    start, end = at("job_started")[0], at("job_finished")[0]
    tasks = at("task_done")
    last = tasks[-1]
    commit = at("point_committed", "writer")[0] - last
    quiet = ", ".join(f"{q - last:+.2f}" for q in at("packs_sealed_quiet")) or "-"
    return (
        f"{work}: job {end - start:.2f} s, tasks {last - tasks[0]:.2f} s, tail {end - last:.2f} s,"
        f" first commit {commit:+.2f} s, quiet seals {quiet} s"
    )


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    for arg in argv:
        print(summary(Path(arg)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
