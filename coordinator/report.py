"""The job report: per VM and disk, full or incremental and why, bytes, time, result.

Written as JSON (for tools) and text (for people); :func:`exit_status` turns it into
the status a scheduler sees.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OK = "ok"
FAILED = "failed"
SKIPPED = "skipped"
PARTIAL = "partial"

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_ERROR = 2  # the job itself could not run (config, vCenter unreachable, ...)


@dataclass
class DiskReport:
    key: int
    label: str = ""
    capacity: int = 0
    mode: str = ""  # full | incremental | "" when skipped before planning
    reason: str = ""
    bytes_planned: int = 0
    tasks: int = 0
    bytes_read: int = 0
    bytes_sent: int = 0
    change_id: str = ""
    status: str = ""
    error: str = ""
    cause: str = ""  # common/causes.py, when failed


@dataclass
class VmReport:
    vcenter: str
    name: str
    moref: str
    uuid: str
    host: str = ""
    status: str = ""
    reason: str = ""
    consistency: str = ""  # quiesced | crash-consistent
    snapshot: str = ""
    point_id: str = ""
    seconds: float = 0.0
    disks: list[DiskReport] = field(default_factory=list)
    cause: str = ""  # common/causes.py, when failed

    @property
    def bytes_planned(self) -> int:
        return sum(d.bytes_planned for d in self.disks)

    @property
    def capacity(self) -> int:
        return sum(d.capacity for d in self.disks if d.mode)

    @property
    def bytes_read(self) -> int:
        return sum(d.bytes_read for d in self.disks)

    @property
    def bytes_sent(self) -> int:
        return sum(d.bytes_sent for d in self.disks)


@dataclass
class RetentionReport:
    """The policy's retention, applied by a writer after the job (coordinator/retention.py)."""

    keep: str  # the rules, e.g. "last 3, daily 7"
    dry_run: bool = False
    kept: int = 0
    removed_count: int = 0  # removed, or would be on a dry run
    removed: list[dict[str, str]] = field(default_factory=list)  # point, vm, why (the first)
    error: str = ""  # it did not run: the points are as they were


@dataclass
class CopyReport:
    """The policy's second copy after the job (coordinator/copy_after_job.py)."""

    to: str  # the target repository
    copied: int = 0
    present: int = 0  # the policy's points the target had already
    failed: list[str] = field(default_factory=list)  # "<point>: <why>" (the first 20)
    chunks_sent: int = 0
    bytes_sent: int = 0
    error: str = ""  # it did not run, or stopped: the target is as a rerun continues it


@dataclass
class JobReport:
    job_id: str
    policy: str
    coordinator: str
    started: float = field(default_factory=time.time)
    finished: float = 0.0
    status: str = ""
    error: str = ""
    vms: list[VmReport] = field(default_factory=list)
    orphans_removed: int = 0
    vcenter_round_trips: int = 0
    # Why the job started no more VMs before the end (a full repository, say) and its
    # cause; the VMs it did not start say "not started: <stopped>". Without ``stopped``,
    # ``cause`` is that of ``error`` where one is known (vcenter: a vCenter not reached).
    stopped: str = ""
    cause: str = ""
    retention: RetentionReport | None = None  # None: the policy has none, or no VM ran
    copy: CopyReport | None = None  # None: the policy has no copy, or no VM ran

    def counts(self) -> dict[str, int]:
        out = {OK: 0, PARTIAL: 0, FAILED: 0, SKIPPED: 0}
        for v in self.vms:
            out[v.status] = out.get(v.status, 0) + 1
        return out

    def finish(self) -> None:
        self.finished = time.time()
        c = self.counts()
        if self.error:
            self.status = FAILED
        elif c[FAILED] or c[PARTIAL]:
            self.status = PARTIAL if c[OK] else FAILED
        else:
            self.status = OK

    def to_dict(self) -> dict[str, Any]:
        """The report for tools: the JSON report, the webhook's body and the job history
        (docs/operations.md, "Job reports")."""
        d = dataclasses.asdict(self)
        for vd, v in zip(d["vms"], self.vms, strict=True):
            vd["bytes_read"], vd["bytes_sent"] = v.bytes_read, v.bytes_sent
        d["counts"] = self.counts()
        d["seconds"] = round((self.finished or time.time()) - self.started, 3)
        d["bytes_planned"] = sum(v.bytes_planned for v in self.vms)
        d["capacity"] = sum(v.capacity for v in self.vms)
        d["bytes_read"] = sum(v.bytes_read for v in self.vms)
        d["bytes_sent"] = sum(v.bytes_sent for v in self.vms)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JobReport:
        """The report :meth:`to_dict` made (the job history's): the keys it derives, and
        any a later version added, are left out."""

        def build(tp: Any, doc: dict[str, Any]) -> Any:
            names = {f.name for f in dataclasses.fields(tp)}
            return tp(**{k: v for k, v in doc.items() if k in names})

        rep: JobReport = build(cls, d)
        rep.vms = []
        for v in d.get("vms", []):
            vr: VmReport = build(VmReport, v)
            vr.disks = [build(DiskReport, dk) for dk in v.get("disks", [])]
            rep.vms.append(vr)
        ret = d.get("retention")
        rep.retention = build(RetentionReport, ret) if isinstance(ret, dict) else None
        cp = d.get("copy")
        rep.copy = build(CopyReport, cp) if isinstance(cp, dict) else None
        return rep

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def to_text(self) -> str:
        d = self.to_dict()
        c = d["counts"]
        lines = [
            f"job {self.job_id}  policy {self.policy}  status {self.status or 'running'}",
            f"  {c[OK]} ok, {c[PARTIAL]} partial, {c[FAILED]} failed, {c[SKIPPED]} skipped;"
            f" planned {size_text(d['bytes_planned'])} of {size_text(d['capacity'])} capacity;"
            f" {d['seconds']:.1f} s; {self.vcenter_round_trips} vCenter round trips",
        ]
        if self.error:
            lines.append(f"  error: {self.error}")
        if self.stopped:
            lines.append(f"  stopped [{self.cause}]: {self.stopped}")
        if self.orphans_removed:
            lines.append(f"  orphan snapshots removed: {self.orphans_removed}")
        if self.retention is not None:
            lines.append(
                f"  retention ({self.retention.keep}): {retention_summary(self.retention)}"
            )
        if self.copy is not None:
            lines.append(f"  copy to {self.copy.to}: {copy_summary(self.copy)}")
        for v in self.vms:
            head = f"  {v.status.upper():8} {v.vcenter}/{v.name}"
            if v.consistency:
                head += f"  [{v.consistency}]"
            if v.seconds:
                head += f"  {v.seconds:.1f} s"
            if v.point_id:
                head += f"  point {v.point_id}"
            lines.append(head)
            if v.reason:
                lines.append(f"           {f'[{v.cause}] ' if v.cause else ''}{v.reason}")
            for dk in v.disks:
                row = f"           disk {dk.key} {dk.label}: {dk.status or '-'}"
                if dk.mode:
                    row += (
                        f" {dk.mode}, {size_text(dk.bytes_planned)} of {size_text(dk.capacity)}"
                        f" in {dk.tasks} task(s)"
                    )
                if dk.reason:
                    row += f" ({dk.reason})"
                if dk.error:
                    row += f" error [{dk.cause or 'internal'}]: {dk.error}"
                lines.append(row)
        return "\n".join(lines) + "\n"

    def write(self, directory: str | Path) -> tuple[Path, Path]:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        js, txt = d / f"{self.job_id}.json", d / f"{self.job_id}.txt"
        for path, text in ((js, self.to_json()), (txt, self.to_text())):
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)
        return js, txt


def exit_status(report: JobReport) -> int:
    """What a scheduler sees. 2: the job could not do all of its work (a vCenter not
    reached, nothing selected where the last job backed VMs up, outside its window, the
    repository or the broker refusing), whatever the VMs it did back up; 1: some VMs it
    selected have no complete point; 0: every VM it selected has one (skipped VMs,
    templates and the like, cannot be backed up and do not count)."""
    if report.error:
        return EXIT_ERROR
    if any(v.status not in (OK, SKIPPED) for v in report.vms):
        return EXIT_SOME_FAILED  # failed, partial, or never finished (no status)
    return EXIT_OK


SHOWN_VMS = 20  # VM lines on stderr before "and N more": the report lists them all


def failure_lines(report: JobReport) -> list[str]:
    """Why the job's exit status is not 0, a line each, for stderr: the job's error, why
    it stopped early, and every VM without a complete point with its cause and reason."""
    lines = []
    if report.error:
        cause = f" [{report.cause}]" if report.cause and not report.stopped else ""
        lines.append(f"job {report.job_id} failed{cause}: {report.error}")
    if report.stopped:
        lines.append(f"job {report.job_id} stopped [{report.cause}]: {report.stopped}")
    bad = [v for v in report.vms if v.status not in (OK, SKIPPED)]
    for v in bad[:SHOWN_VMS]:
        cause = f" [{v.cause}]" if v.cause else ""
        why = v.reason or "no reason recorded"
        lines.append(f"{v.status or 'unfinished'} {v.vcenter}/{v.name}{cause}: {why}")
    if len(bad) > SHOWN_VMS:
        lines.append(f"... and {len(bad) - SHOWN_VMS} more VM(s) not backed up (see the report)")
    return lines


def retention_summary(r: RetentionReport) -> str:
    if r.error:
        return f"not applied: {r.error}"
    verb = "would be removed (dry run)" if r.dry_run else "removed"
    return f"{r.kept} point(s) kept, {r.removed_count} {verb}"


def copy_summary(r: CopyReport) -> str:
    failed = f", {len(r.failed)} failed ({r.failed[0]})" if r.failed else ""
    done = (
        f"{r.copied} point(s) copied, {r.present} there already{failed};"
        f" {r.chunks_sent} chunks ({size_text(r.bytes_sent)}) sent"
    )
    return f"stopped: {r.error} ({done})" if r.error else done


def size_text(n: int) -> str:
    x = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(x) < 1024 or unit == "TiB":
            return f"{x:.0f} {unit}" if unit == "B" else f"{x:.1f} {unit}"
        x /= 1024
    return f"{x} B"
