"""Durable writes: fsyncs go to the pool only while fsync waits on a device."""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from repository import fsutil
from repository.errors import RepositoryError, RepositoryFullError


@pytest.fixture
def fsync_threads(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], list[int]]:
    """Make fsync take ``delay`` seconds (a busy disk) or return at once (0: a write cache
    with power-loss protection, no real fsync), and record the threads it runs in; the
    moving average starts where a new process starts it."""
    monkeypatch.setattr(fsutil, "_fsync_latency", 1.0)
    seen: list[int] = []
    delay = [0.0]
    real = os.fsync

    def device_fsync(fd: int) -> None:
        seen.append(threading.get_ident())
        if delay[0]:
            real(fd)
            time.sleep(delay[0])

    monkeypatch.setattr(fsutil.os, "fsync", device_fsync)

    def set_delay(seconds: float) -> list[int]:
        delay[0] = seconds
        seen.clear()
        return seen

    return set_delay


def _write_batch(d: Path, tag: str, n: int = 4) -> list[Path]:
    paths = [d / f"{tag}-{i}" for i in range(n)]
    fsutil.write_files_durable(
        [(p, [tag.encode(), bytes([i]) * 1000], p.name) for i, p in enumerate(paths)]
    )
    return paths


def test_slow_fsyncs_run_concurrently_in_the_pool(
    tmp_path: Path, fsync_threads: Callable[[float], list[int]]
) -> None:
    seen = fsync_threads(0.02)
    paths = _write_batch(tmp_path, "slow")
    assert len(seen) == 4
    assert threading.get_ident() not in seen
    assert len(set(seen)) > 1  # together: the file system can group them in one commit
    for i, p in enumerate(paths):
        assert p.read_bytes() == b"slow" + bytes([i]) * 1000


def test_fast_fsyncs_stay_in_the_calling_thread_until_the_device_slows_down(
    tmp_path: Path, fsync_threads: Callable[[float], list[int]]
) -> None:
    seen = fsync_threads(0.0)
    batches = 0
    while set(seen) != {threading.get_ident()}:  # the average comes down from "slow"
        seen.clear()
        _write_batch(tmp_path, f"fast{batches}")
        batches += 1
        assert batches < 100, "fsync never moved to the calling thread"
    assert fsutil.fsyncs_inline()
    seen.clear()
    fsutil.fsync_dirs([tmp_path, tmp_path.parent])
    assert seen == [threading.get_ident()] * 2

    seen = fsync_threads(0.01)  # the device is busy now
    batches = 0
    while threading.get_ident() in seen or not seen:
        seen.clear()
        _write_batch(tmp_path, f"slow{batches}")
        batches += 1
        assert batches < 20, "slow fsyncs stayed in the calling thread"
    assert not fsutil.fsyncs_inline()


@pytest.mark.parametrize(
    "code, error", [(errno.EIO, RepositoryError), (errno.ENOSPC, RepositoryFullError)]
)
@pytest.mark.parametrize("inline", [True, False])
def test_a_failed_fsync_names_the_file_and_leaves_none_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, error: type[Exception], inline: bool
) -> None:
    monkeypatch.setattr(fsutil, "_fsync_latency", 0.0 if inline else 1.0)
    real = os.fsync
    calls = [0]

    def failing_fsync(fd: int) -> None:
        calls[0] += 1
        if calls[0] == 3:
            raise OSError(code, os.strerror(code))
        real(fd)

    monkeypatch.setattr(fsutil.os, "fsync", failing_fsync)
    with pytest.raises(error, match=r"chunk-\d"):
        fsutil.write_files_durable(
            [(tmp_path / f"chunk-{i}", [b"x" * 10], f"chunk-{i}") for i in range(4)]
        )
    assert list(tmp_path.iterdir()) == []
