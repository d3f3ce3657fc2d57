"""Direct path: a HotAdd-attached device or the flat file on an NFS-mounted datastore."""

from __future__ import annotations

import errno
import os
import stat

from common.snapshot_disk import SnapshotDisk
from proxy_worker.errors import DiskNotFoundError, ShortReadError, TransportError
from proxy_worker.settings import ProxySettings
from proxy_worker.transports.base import DiskReader, Extent, check_range, flat_file


def local_flat_path(source: SnapshotDisk, settings: ProxySettings) -> str:
    """Local path of the disk's raw data through the datastore -> mount mapping."""
    ds, rel = flat_file(source.disk_file)
    mount = settings.mount_of(ds)
    path = os.path.join(mount, rel)
    # The mapping is the trust boundary: the path must stay inside the mount.
    if os.path.commonpath([os.path.realpath(mount), os.path.realpath(path)]) != os.path.realpath(
        mount
    ):
        raise DiskNotFoundError(f"{source.disk_file!r} resolves outside datastore mount {mount!r}")
    return path


class FileReader(DiskReader):
    transport = "file"

    def __init__(self, path: str, capacity: int) -> None:
        super().__init__(capacity)
        self.path = path
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise DiskNotFoundError(f"disk data {path!r} not found") from exc
        except OSError as exc:
            raise TransportError(f"cannot open {path!r}: {exc.strerror}") from exc
        st = os.fstat(self._fd)
        size = st.st_size
        if stat.S_ISBLK(st.st_mode):
            size = os.lseek(self._fd, 0, os.SEEK_END)
        self._regular = stat.S_ISREG(st.st_mode)
        if size < capacity:
            os.close(self._fd)
            raise ShortReadError(f"{path!r} holds {size} bytes, less than capacity {capacity}")

    def read(self, offset: int, length: int) -> bytes:
        check_range(offset, length, self.capacity)
        parts: list[bytes] = []
        got = 0
        while got < length:
            try:
                b = os.pread(self._fd, length - got, offset + got)
            except OSError as exc:
                raise TransportError(f"read {self.path!r} at {offset + got}: {exc}") from exc
            if not b:
                raise ShortReadError(
                    f"{self.path!r}: got {got} of {length} bytes at offset {offset} (file shrank?)"
                )
            parts.append(b)
            got += len(b)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def extents(self, offset: int, length: int) -> list[Extent]:
        check_range(offset, length, self.capacity)
        if not self._regular:
            return super().extents(offset, length)
        out: list[Extent] = []
        end = offset + length
        pos = offset
        while pos < end:
            try:
                data = os.lseek(self._fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: no data after pos
                    return super().extents(offset, length)
                data = end
            data = min(data, end)
            if data > pos:
                out.append(Extent(pos, data - pos, False))
            if data >= end:
                break
            hole = min(os.lseek(self._fd, data, os.SEEK_HOLE), end)
            out.append(Extent(data, hole - data, True))
            pos = hole
        return out

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class FileTransport:
    name = "file"

    def __init__(self, settings: ProxySettings) -> None:
        self.settings = settings

    def open(self, source: SnapshotDisk) -> FileReader:
        return FileReader(local_flat_path(source, self.settings), source.capacity)

    def close(self) -> None:
        pass
