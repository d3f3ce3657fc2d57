"""The interface every transport implements, and the disk naming rule they share.

A transport opens the disk of a task (its :class:`SnapshotDisk`, as the task carries it)
as a :class:`DiskReader`: ``read`` exact byte ranges, ``extents`` to learn which ranges
hold data (where the transport knows), ``close``.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

from common.snapshot_disk import SnapshotDisk
from proxy_worker.errors import OutOfRangeError, TaskError

_DISK_FILE = re.compile(r"^\[(?P<ds>[^\]]+)\] ?(?P<path>.+)$")


def split_disk_file(disk_file: str) -> tuple[str, str]:
    """'[ds] dir/name.vmdk' -> ('ds', 'dir/name.vmdk'); TaskError when malformed."""
    m = _DISK_FILE.match(disk_file)
    if m is None or not m.group("path").strip():
        raise TaskError(f"disk file {disk_file!r} is not of the form '[datastore] path.vmdk'")
    path = m.group("path")
    if path.startswith("/") or ".." in path.split("/"):
        raise TaskError(f"disk file {disk_file!r} has an unsafe path")
    return m.group("ds"), path


def flat_file(disk_file: str) -> tuple[str, str]:
    """The raw data of '[ds] dir/name.vmdk' lives in 'dir/name-flat.vmdk' (flat disks)."""
    ds, path = split_disk_file(disk_file)
    if not path.endswith(".vmdk"):
        raise TaskError(f"disk file {disk_file!r} does not end in .vmdk")
    if path.endswith("-flat.vmdk"):
        return ds, path
    return ds, path[: -len(".vmdk")] + "-flat.vmdk"


@dataclass(frozen=True)
class Extent:
    offset: int
    length: int
    data: bool  # False: the transport knows the range reads as zeros (hole or zero extent)

    @property
    def end(self) -> int:
        return self.offset + self.length


def check_range(offset: int, length: int, capacity: int) -> None:
    if offset < 0 or length < 0:
        raise OutOfRangeError(f"negative range offset={offset} length={length}")
    if offset + length > capacity:
        raise OutOfRangeError(
            f"range {offset}+{length} ends at {offset + length}, past capacity {capacity}"
        )


def normalize_extents(raw: Iterable[Extent], offset: int, length: int) -> list[Extent]:
    """Clip to [offset, offset+length), merge neighbours of the same kind, and fill any
    range the source did not describe as data (unknown must be read)."""
    end = offset + length
    out: list[Extent] = []
    pos = offset
    for e in sorted(raw, key=lambda x: x.offset):
        s, t = max(e.offset, pos), min(e.end, end)
        if t <= s:
            continue
        if s > pos:
            _append(out, Extent(pos, s - pos, True))
        _append(out, Extent(s, t - s, e.data))
        pos = t
    if pos < end:
        _append(out, Extent(pos, end - pos, True))
    return out


def _append(out: list[Extent], e: Extent) -> None:
    if out and out[-1].data == e.data and out[-1].end == e.offset:
        out[-1] = Extent(out[-1].offset, out[-1].length + e.length, e.data)
    else:
        out.append(e)


class DiskReader(abc.ABC):
    """One open disk. Not thread safe: one reader per task stream."""

    transport: str = "?"

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity

    @abc.abstractmethod
    def read(self, offset: int, length: int) -> bytes | bytearray:
        """Exactly ``length`` bytes at ``offset``, or a TransportError."""

    def extents(self, offset: int, length: int) -> list[Extent]:
        """Data/zero ranges covering [offset, offset+length); default: all data (unknown)."""
        check_range(offset, length, self.capacity)
        return [Extent(offset, length, True)] if length else []

    def read_many(
        self, ranges: Iterable[tuple[int, int]]
    ) -> Iterator[tuple[int, bytes | bytearray]]:
        """Yield (offset, data) for each range in order; transports that can keep several
        requests in flight override this."""
        for off, ln in ranges:
            yield off, self.read(off, ln)

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def __enter__(self) -> DiskReader:
        return self

    def __exit__(
        self,
        et: type[BaseException] | None,
        ev: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Transport(Protocol):
    """Opens disks; one instance per transport kind, shared by the proxy's threads."""

    name: str

    def open(self, source: SnapshotDisk) -> DiskReader: ...

    def close(self) -> None: ...
