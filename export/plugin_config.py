"""The parameters `vmbackup export` gives our nbdkit plugin (``key=value`` after the
script on nbdkit's command line), checked, and the reader they open.

The passphrase of an encrypted repository never appears here: ``passphrase-fd`` names
an inherited pipe that the parent wrote it to and closed (argv and the environment are
readable by other processes of the user through /proc, and the environment is inherited
by every child; a pipe is read once and gone).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from common.logging import get_logger
from repository.disk_reader import DiskReader
from repository.errors import InvalidRequestError, PointNotFoundError, RepositoryError
from repository.holds import Hold

MiB = 1 << 20
KEYS = (
    "repo",
    "point",
    "disk",
    "cache-mib",
    "passphrase-fd",
    "status-fd",
    "control-fd",
    "metrics-port",
    "metrics-address",
    "s3-config",
    "cache-dir",
)


@dataclass
class PluginParams:
    repo: str = ""
    point: str = ""
    disk: int = -1
    cache_mib: int = 128
    passphrase_fd: int = -1  # -1: an unencrypted repository
    status_fd: int = -1  # -1: no stats line at exit
    control_fd: int = -1  # -1: no control pipe (plugin_control.py)
    metrics_port: int = 0  # 0: no /metrics
    metrics_address: str = "127.0.0.1"
    s3_config: str = ""  # repo=s3://...: its S3 config file
    cache_dir: str = ""  # ... and its local cache ("": the default)
    seen: set[str] = field(default_factory=set)

    def set(self, key: str, value: str) -> None:
        """One ``key=value`` of the command line; a clear error for a bad one."""
        if key not in KEYS:
            raise InvalidRequestError(
                f"vmbackup export plugin: unknown parameter {key!r} (known: {', '.join(KEYS)})"
            )
        if key in ("repo", "point", "metrics-address", "s3-config", "cache-dir"):
            setattr(self, key.replace("-", "_"), value)
        else:
            try:
                number = int(value)
            except ValueError:
                raise InvalidRequestError(
                    f"vmbackup export plugin: {key}={value!r} is not a whole number"
                ) from None
            if number < (0 if key in ("disk", "metrics-port") else -1) or (
                key == "cache-mib" and number < 1
            ):
                raise InvalidRequestError(f"vmbackup export plugin: {key}={number} is out of range")
            setattr(self, key.replace("-", "_"), number)
        self.seen.add(key)

    def check(self) -> None:
        missing = [k for k in ("repo", "point", "disk") if k not in self.seen]
        if missing:
            raise InvalidRequestError(
                f"vmbackup export plugin: missing parameter(s) {', '.join(missing)}"
            )


def read_passphrase(fd: int) -> str | None:
    """The passphrase from the pipe ``fd`` (closed after), None for -1."""
    if fd < 0:
        return None
    chunks: list[bytes] = []
    try:
        while block := os.read(fd, 4096):
            chunks.append(block)
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8")


def open_reader(params: PluginParams) -> tuple[DiskReader, Hold | None]:
    """The disk of the point, on a repository opened for reading, and a hold on the point
    (repository/holds.py: prune keeps it while we serve it; None when the repository
    cannot be written, e.g. mounted read-only: served all the same, with a warning). The
    hold is the only thing written."""
    from export.metrics import count_chunk
    from repository.repository import Repository

    repo = Repository.open(
        params.repo,
        read_passphrase(params.passphrase_fd),
        s3_config=Path(params.s3_config) if params.s3_config else None,
        cache_dir=Path(params.cache_dir) if params.cache_dir else None,
    )
    reader = DiskReader(
        repo, params.point, params.disk, cache_bytes=params.cache_mib * MiB, on_chunk=count_chunk
    )
    try:
        hold = repo.hold_point(params.point, f"export of disk {params.disk}")
    except PointNotFoundError:
        raise  # pruned while we opened it
    except RepositoryError as exc:
        get_logger("export").warning(
            "point_not_held", point=params.point, error=str(exc), why="prune may remove it"
        )
        hold = None
    return reader, hold
