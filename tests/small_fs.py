"""A real small file system for tests that fill one: a tmpfs mounted for the test.

tmpfs answers ENOSPC like any file system and can be grown in place (remount), which is
how the tests "free space". Mounting needs root, as `make test` and CI run.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

MiB = 1 << 20


def _mount(*args: str) -> None:
    res = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"mount {' '.join(args)}: {res.stderr.strip()}")


@contextlib.contextmanager
def small_filesystem(path: Path, size: int) -> Iterator[Path]:
    """A tmpfs of ``size`` bytes at ``path`` (created), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.fail("mounting a small file system needs root (make test runs as root)")
    path.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path))
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def grow(path: Path, size: int) -> None:
    """Give the tmpfs at ``path`` room up to ``size`` bytes: space freed for the writer."""
    _mount("-o", f"remount,size={size}", str(path))


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize
