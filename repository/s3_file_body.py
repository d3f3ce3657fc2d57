"""A request body that botocore reads from a local file as it sends it: a sealed pack goes
to S3 without a copy of the object (or of a 64 MiB part) in memory.

Copying each part out of the mmap'd pack into a new buffer faulted in fresh pages on every
upload (the parts are larger than any buffer glibc will keep for reuse): a fifth of a
writer's CPU on S3 (bench/RESULTS.md, "S3 on the lab's RGW vs local").
"""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING, BinaryIO, cast

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer


class FileRange(io.RawIOBase):
    """Bytes ``offset`` .. ``offset + length`` of the open file ``fd``, read-only and
    seekable (botocore seeks back to the start to retry a request, and reads it through
    once more where a checksum is needed). Reads use ``os.pread``, so the ranges of one
    descriptor never share a file position; the caller keeps ``fd`` open while the
    request runs and closes it."""

    def __init__(self, fd: int, offset: int, length: int) -> None:
        super().__init__()
        if offset < 0 or length < 0:
            raise ValueError(f"file range {offset}+{length}: negative")
        self._fd = fd
        self._start = offset
        self._length = length
        self._pos = 0

    def __len__(self) -> int:  # botocore's Content-Length
        return self._length

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._length}[whence]
        if base + offset < 0:
            raise ValueError(f"seek to {base + offset}: before the start of the range")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        left = self._length - self._pos
        want = left if size is None or size < 0 else min(size, left)
        if want <= 0:
            return b""
        data = os.pread(self._fd, want, self._start + self._pos)
        if not data:
            raise OSError(f"file ended {self._start + self._pos} bytes in, inside its range")
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)


def request_body(body: bytes | FileRange) -> bytes | BinaryIO:
    """``body`` as botocore's stubs type a Body: a FileRange is the file-like object
    botocore reads (``read``, ``seek``, ``tell``), not a typing.IO subclass."""
    return body if isinstance(body, bytes) else cast(BinaryIO, body)
