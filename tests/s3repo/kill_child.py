"""Child of test_s3_kill.py: import a disk into an S3 repository and SIGKILL itself when
the upload reaches ``KILL_AT`` (an object name prefix: ``packs/`` = before the pack
object, ``index/`` = after it, before its index object; ``part:N`` = before multipart
part N of a pack). The storage is the real one; only the moment of death is chosen."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from repository.import_disk import import_disk
from repository.repository import Repository
from repository.s3_multipart import PartBody
from repository.s3_repo_storage import S3RepoStorage
from repository.storage import Bytes


def main() -> None:
    url, cfg, cache, image, kill_at = sys.argv[1:6]
    real_write = S3RepoStorage.write

    def write(self: S3RepoStorage, name: str, parts: Sequence[Bytes]) -> None:
        if name.startswith(kill_at):
            os.kill(os.getpid(), signal.SIGKILL)
        real_write(self, name, parts)

    real_write_file = S3RepoStorage.write_file

    def write_file(self: S3RepoStorage, name: str, path: Path) -> None:  # sealed packs
        if name.startswith(kill_at):
            os.kill(os.getpid(), signal.SIGKILL)
        real_write_file(self, name, path)

    real_part = S3RepoStorage.upload_part

    def upload_part(
        self: S3RepoStorage, name: str, upload_id: str, number: int, body: PartBody
    ) -> str:
        if kill_at == f"part:{number}" and name.startswith("packs/"):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_part(self, name, upload_id, number, body)

    # Kill points, not stand-ins: each wrapper calls the real S3 method on the lab's RGW
    # unless this is the moment to SIGKILL the process (a signal cannot be sent from
    # inside botocore at an exact request otherwise).
    S3RepoStorage.write = write  # type: ignore[method-assign,assignment]
    # sealed packs go up through write_file (read from the file): the real one runs, on
    # the lab's RGW, unless this is the kill point
    S3RepoStorage.write_file = write_file  # type: ignore[method-assign,assignment]
    S3RepoStorage.upload_part = upload_part  # type: ignore[method-assign,assignment]
    repo = Repository.open(url, s3_config=cfg, cache_dir=Path(cache))
    import_disk(repo, "vm", 2000, image, workers=0)
    print("not killed", flush=True)


if __name__ == "__main__":
    main()
