"""Child process for the crash test: imports, prunes and collects forever until killed.

With a fourth argument (a file outside the repository) it expects the repository's file
system to fill: an import or gc refused with RepositoryFullError is noted in that file, the
points are pruned to make room, and it goes on.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from repository.errors import RepositoryFullError
from repository.gc import gc
from repository.import_disk import import_disk
from repository.prune import KeepPolicy, prune
from repository.repository import Repository


def main() -> None:
    repo = Repository.open(sys.argv[1])
    img = Path(sys.argv[2])
    rnd = random.Random(int(sys.argv[3]))
    cs = repo.chunk_size
    base = [rnd.randbytes(cs) for _ in range(4)]
    print("ready", flush=True)
    full_log = Path(sys.argv[4]) if len(sys.argv) > 4 else None
    i = 0
    while True:
        parts = [rnd.choice([*base, rnd.randbytes(cs), bytes(cs)]) for _ in range(12)]
        img.write_bytes(b"".join(parts))
        try:
            import_disk(repo, f"vm{i % 3}", 2000, img)
            if i % 4 == 3:
                prune(repo, KeepPolicy(last=2))
                gc(repo, grace=0)
        except RepositoryFullError:
            if full_log is None:
                raise
            with full_log.open("a") as fh:
                fh.write("full\n")
            prune(repo, KeepPolicy(last=1))
            gc(repo, grace=0)
        i += 1


if __name__ == "__main__":
    main()
