"""export/nbdfuse.py on real nbdkit and nbdfuse: a file that is an NBD export, its
unmount, and a clear error when there is nothing to mount."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from export.nbdfuse import NbdfuseError, mount_file, mounted

SIZE = 3 * 2**20


@pytest.fixture
def memory_export(tmp_path: Path) -> Iterator[Path]:
    sock = tmp_path / "m.sock"
    proc = subprocess.Popen(["nbdkit", "--foreground", "-U", str(sock), "memory", str(SIZE)])
    try:
        while not sock.exists():
            assert proc.poll() is None, "nbdkit did not start"
            time.sleep(0.05)
        yield sock
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_mounted_file_reads_and_writes_the_export(tmp_path: Path, memory_export: Path) -> None:
    flat = tmp_path / "dir with space" / "disk-flat.vmdk"
    flat.parent.mkdir()
    m = mount_file(flat, memory_export)
    try:
        assert mounted(flat) and os.path.getsize(flat) == SIZE
        fd = os.open(flat, os.O_RDWR)
        try:
            os.pwrite(fd, b"through nbdfuse", SIZE - 15)
            assert os.pread(fd, 15, SIZE - 15) == b"through nbdfuse"
        finally:
            os.close(fd)
    finally:
        m.unmount()
    assert not mounted(flat)
    assert m.proc.poll() is not None  # nbdfuse ended
    assert os.path.getsize(flat) == 0  # the file it covered is back, untouched
    m.unmount()  # twice is harmless


def test_nothing_to_mount_is_a_clear_error(tmp_path: Path) -> None:
    flat = tmp_path / "disk-flat.vmdk"
    with pytest.raises(NbdfuseError, match="nbdfuse exited with status"):
        mount_file(flat, tmp_path / "no-such.sock")
    assert not mounted(flat)
