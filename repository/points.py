"""Restore points: metadata plus one map per disk, committed atomically as a directory.

``points/<vm uuid>/<point id>/`` holds ``meta`` (a blob of JSON, encrypted in an
encrypted repository) and ``disk-<key>.map``. A point is built in a temporary
sibling directory, every file and the directory are fsynced, then one rename
makes it visible: a crash leaves either no point or the whole point.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import blake3

from repository.errors import (
    CorruptObjectError,
    InvalidRequestError,
    PointNotFoundError,
    RepositoryError,
)
from repository.fixed_index import DiskMap, Tagger
from repository.fsutil import (
    TMP_PREFIX,
    fsync_dir,
    makedirs_durable,
    os_error,
    write_file_durable,
)
from repository.meta_auth import MetaAuth

META_VERSION = 1
DELETED_PREFIX = ".deleted-"
STATUSES = ("complete", "partial")
_POINT_ID = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{8}")
_VM_UUID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def check_vm_uuid(vm_uuid: str) -> str:
    if not isinstance(vm_uuid, str) or not _VM_UUID.fullmatch(vm_uuid) or ".." in vm_uuid:
        raise InvalidRequestError(f"vm_uuid {vm_uuid!r:.80} is not a valid identifier")
    return vm_uuid


def check_point_id(point_id: str) -> str:
    if not isinstance(point_id, str) or not _POINT_ID.fullmatch(point_id):
        raise PointNotFoundError(f"not a point id (YYYYMMDDTHHMMSSZ-xxxxxxxx): {point_id!r:.80}")
    return point_id


def make_point_id(job_id: str, vm_uuid: str, snapshot_time: float) -> str:
    """Deterministic, so a redelivered commit request finds the point it already made."""
    stamp = datetime.fromtimestamp(snapshot_time, UTC).strftime("%Y%m%dT%H%M%SZ")
    digest = blake3.blake3(f"{job_id}\0{vm_uuid}\0{snapshot_time!r}".encode()).hexdigest()
    return f"{stamp}-{digest[:8]}"


@dataclass
class PointDisk:
    key: int
    capacity: int
    change_id: str
    base_point_id: str
    info: dict[str, Any]
    chunks: int  # chunks in the map
    zero_chunks: int
    changed_chunks: int  # entries the commit named (the rest came from the base map)

    @property
    def map_name(self) -> str:
        return f"disk-{self.key}.map"


@dataclass
class Point:
    id: str
    job_id: str
    vcenter: str
    vm_uuid: str
    vm_moref: str
    vm_name: str
    vm_config: bytes
    status: str
    snapshot_time: float
    created: float
    chunk_size: int
    disks: list[PointDisk] = field(default_factory=list)
    failed_disks: list[tuple[int, str]] = field(default_factory=list)

    def disk(self, key: int) -> PointDisk:
        for d in self.disks:
            if d.key == key:
                return d
        raise PointNotFoundError(f"point {self.id} has no disk {key}")

    @property
    def logical_bytes(self) -> int:
        return sum(d.capacity for d in self.disks)

    def to_json(self) -> bytes:
        doc = asdict(self)
        doc["format_version"] = META_VERSION
        doc["vm_config"] = base64.b64encode(self.vm_config).decode()
        return json.dumps(doc, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, name: str) -> Point:
        try:
            doc = json.loads(data)
            if doc.pop("format_version") != META_VERSION:
                raise CorruptObjectError(name, "unsupported point metadata version")
            doc["vm_config"] = base64.b64decode(doc["vm_config"], validate=True)
            doc["disks"] = [PointDisk(**d) for d in doc["disks"]]
            doc["failed_disks"] = [(int(k), str(r)) for k, r in doc["failed_disks"]]
            return cls(**doc)
        except CorruptObjectError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptObjectError(name, f"bad point metadata: {exc}") from None


class PointStore:
    """Point directories; meta blobs are (de)serialised by the callables given, maps
    are tagged by ``auth`` (bound to their VM, point and disk) and must have the
    repository's ``chunk_size``."""

    def __init__(
        self,
        root: Path,
        seal: Callable[[bytes], tuple[bytes, bytes | bytearray]],
        unseal: Callable[[bytes, str], bytes],
        auth: MetaAuth,
        chunk_size: int,
    ) -> None:
        self.root = root
        self._seal = seal
        self._unseal = unseal
        self.auth = auth
        self.chunk_size = chunk_size

    def map_tagger(self, vm_uuid: str, point_id: str, disk_key: int) -> Tagger:
        def tag(header: bytes, entries: bytes | bytearray | memoryview) -> bytes:
            return self.auth.map_tag(vm_uuid, point_id, disk_key, header, entries)

        return tag

    def vm_dirs(self) -> Iterator[Path]:
        try:
            names = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return
        for n in names:
            if not n.startswith(".") and _VM_UUID.fullmatch(n):
                yield self.root / n

    def point_dirs(self, vm_uuid: str | None = None) -> Iterator[Path]:
        vms = [self.root / check_vm_uuid(vm_uuid)] if vm_uuid else list(self.vm_dirs())
        for vm in vms:
            try:
                names = sorted(os.listdir(vm))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for n in names:
                if _POINT_ID.fullmatch(n):
                    yield vm / n

    def find(self, point_id: str) -> Path:
        check_point_id(point_id)
        for vm in self.vm_dirs():
            if (vm / point_id).is_dir():
                return vm / point_id
        raise PointNotFoundError(f"no restore point {point_id}")

    def load(self, pdir: Path) -> Point:
        name = f"point metadata {pdir / 'meta'}"
        try:
            data = (pdir / "meta").read_bytes()
        except FileNotFoundError:
            raise CorruptObjectError(name, "meta file is missing") from None
        point = Point.from_json(self._unseal(data, name), name)
        if point.id != pdir.name or point.vm_uuid != pdir.parent.name:
            raise CorruptObjectError(name, "metadata does not match its location")
        return point

    def load_map(self, pdir: Path, disk: PointDisk) -> DiskMap:
        name = f"map of disk {disk.key} {pdir / disk.map_name}"
        try:
            data = (pdir / disk.map_name).read_bytes()
        except FileNotFoundError:
            raise CorruptObjectError(name, "map file is missing") from None
        tag = self.map_tagger(pdir.parent.name, pdir.name, disk.key)
        m = DiskMap.decode(data, name, tag, keyed=self.auth.keyed)
        if m.capacity != disk.capacity:
            raise CorruptObjectError(name, f"capacity {m.capacity}, metadata says {disk.capacity}")
        if m.chunk_size != self.chunk_size:  # fixed for the repository's life
            raise CorruptObjectError(
                name, f"chunk size {m.chunk_size}, the repository's is {self.chunk_size}"
            )
        return m

    def commit(self, point: Point, maps: Mapping[int, DiskMap]) -> tuple[str, bool]:
        """Write the point durably and atomically; (id, False) when it already existed."""
        vm_dir = self.root / check_vm_uuid(point.vm_uuid)
        final = vm_dir / point.id
        if final.is_dir():
            return point.id, False
        makedirs_durable(vm_dir)
        tmp = vm_dir / f"{TMP_PREFIX}{point.id}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            os.mkdir(tmp)
            for d in point.disks:
                tag = self.map_tagger(point.vm_uuid, point.id, d.key)
                write_file_durable(
                    tmp / d.map_name, maps[d.key].encode(tag), f"map of disk {d.key}"
                )
            write_file_durable(tmp / "meta", self._seal(point.to_json()), f"point {point.id}")
            fsync_dir(tmp)
            try:
                os.rename(tmp, final)
            except OSError as exc:
                if final.is_dir():  # a concurrent commit of the same request won
                    shutil.rmtree(tmp, ignore_errors=True)
                    return point.id, False
                raise os_error(exc, f"point {point.id}") from exc
            fsync_dir(vm_dir)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise os_error(exc, f"point {point.id}") from exc
        except RepositoryError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return point.id, True

    def delete(self, pdir: Path) -> None:
        """Atomically hide the point (rename), then remove its files."""
        trash = pdir.parent / f"{DELETED_PREFIX}{pdir.name}-{secrets.token_hex(4)}"
        os.rename(pdir, trash)
        fsync_dir(pdir.parent)
        shutil.rmtree(trash, ignore_errors=True)

    def leftovers(self) -> Iterator[tuple[Path, float]]:
        """Temp and deleted point directories (from crashes), with their mtime."""
        for vm in self.vm_dirs():
            try:
                entries = list(os.scandir(vm))
            except FileNotFoundError:
                continue
            for e in entries:
                if e.name.startswith((TMP_PREFIX, DELETED_PREFIX)):
                    try:
                        yield Path(e.path), e.stat().st_mtime
                    except FileNotFoundError:
                        continue


def now() -> float:
    return time.time()
