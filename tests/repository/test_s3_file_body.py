"""FileRange, the request body botocore reads from a sealed pack: reads, seeks and the
re-reads a retry or a checksum makes, against the same slice of bytes (Hypothesis)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from repository.s3_file_body import FileRange

DATA = os.urandom(100_000)


@pytest.fixture(scope="module")
def fd(tmp_path_factory: pytest.TempPathFactory) -> int:
    path: Path = tmp_path_factory.mktemp("file-body") / "pack"
    path.write_bytes(DATA)
    return os.open(path, os.O_RDONLY)


@settings(max_examples=300, deadline=None)
@given(
    start=st.integers(0, len(DATA)),
    length=st.integers(0, 40_000),
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("read"), st.integers(-1, 50_000)),
            st.tuples(st.just("seek"), st.integers(0, 45_000)),
            st.tuples(st.just("into"), st.integers(0, 30_000)),
        ),
        max_size=12,
    ),
)
def test_reads_and_seeks_follow_the_slice(
    fd: int, start: int, length: int, steps: list[tuple[str, int]]
) -> None:
    length = min(length, len(DATA) - start)
    want = io.BytesIO(DATA[start : start + length])  # the model
    body = FileRange(fd, start, length)
    assert len(body) == length and body.seekable() and body.readable()
    for op, n in steps:
        if op == "read":
            assert body.read(n) == want.read(n)
        elif op == "seek":
            assert body.seek(n) == want.seek(n)
        else:
            got, model = bytearray(n), bytearray(n)
            assert body.readinto(got) == want.readinto(model)
            assert got == model
        assert body.tell() == want.tell()
    body.seek(0)  # what botocore does before a retry
    assert body.read() == DATA[start : start + length]
    if length >= 3:
        assert body.seek(-3, os.SEEK_END) == length - 3 and body.read() == want.getvalue()[-3:]


def test_a_file_shorter_than_its_range_is_an_error_not_short_bytes(fd: int) -> None:
    body = FileRange(fd, len(DATA) - 10, 20)
    assert body.read(10) == DATA[-10:]
    with pytest.raises(OSError, match="inside its range"):
        body.read(10)
    with pytest.raises(ValueError, match="negative"):
        FileRange(fd, -1, 5)
    with pytest.raises(ValueError, match="before the start"):
        FileRange(fd, 0, 5).seek(-1, os.SEEK_CUR)
