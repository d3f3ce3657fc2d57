"""Restore points: metadata plus one map per disk, objects of the repository's storage.

``points/<vm uuid>/<point id>/`` holds ``disk-<key>.map`` per disk and ``meta`` (a blob
of JSON, encrypted in an encrypted repository). The maps are written first, the meta
last: the meta is the commit record (one atomic write), so a crash leaves either no
point (maps without meta, invisible, removed by gc) or the whole point, with no rename,
which object storage does not have. Removal deletes the meta first.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import blake3

from repository.errors import (
    CorruptObjectError,
    InvalidRequestError,
    MissingObjectError,
    PointNotFoundError,
    RepositoryError,
)
from repository.fixed_index import DiskMap, Tagger
from repository.fsutil import TMP_PREFIX
from repository.meta_auth import MetaAuth
from repository.storage import Storage

META_VERSION = 1
PREFIX = "points"
META = "meta"
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


class PointRef(NamedTuple):
    """Where a point's objects are: ``points/<vm uuid>/<point id>/...``."""

    vm_uuid: str
    point_id: str

    @property
    def prefix(self) -> str:
        return f"{PREFIX}/{self.vm_uuid}/{self.point_id}"

    @property
    def meta(self) -> str:
        return f"{self.prefix}/{META}"

    def map(self, disk_key: int) -> str:
        return f"{self.prefix}/disk-{disk_key}.map"


class PointStore:
    """Points as objects of the repository's storage (storage.py): ``meta`` (a blob of
    the point's JSON) is the commit record, written after every map it names; a point
    is what has a ``meta``. Meta blobs are (de)serialised by the callables given, maps
    are tagged by ``auth`` (bound to their VM, point and disk) and must have the
    repository's ``chunk_size``."""

    def __init__(
        self,
        storage: Storage,
        seal: Callable[[bytes], tuple[bytes, bytes | bytearray]],
        unseal: Callable[[bytes, str], bytes],
        auth: MetaAuth,
        chunk_size: int,
    ) -> None:
        self.storage = storage
        self._seal = seal
        self._unseal = unseal
        self.auth = auth
        self.chunk_size = chunk_size

    def map_tagger(self, vm_uuid: str, point_id: str, disk_key: int) -> Tagger:
        def tag(header: bytes, entries: bytes | bytearray | memoryview) -> bytes:
            return self.auth.map_tag(vm_uuid, point_id, disk_key, header, entries)

        return tag

    def _objects(self, vm_uuid: str | None) -> Iterator[tuple[PointRef, str, float]]:
        """(point, part, mtime) of every object under points/ (of one VM) whose place
        is a point's: ``points/<vm uuid>/<point id>/<part>``."""
        prefix = f"{PREFIX}/{check_vm_uuid(vm_uuid)}" if vm_uuid else PREFIX
        for obj in self.storage.list(prefix):
            parts = obj.name.split("/")
            if len(parts) != 4 or not _VM_UUID.fullmatch(parts[1]):
                continue
            if _POINT_ID.fullmatch(parts[2]):
                yield PointRef(parts[1], parts[2]), parts[3], obj.mtime

    def point_refs(self, vm_uuid: str | None = None) -> Iterator[PointRef]:
        """Every committed point (one with its meta), of one VM or all, by name."""
        for ref, part, _ in self._objects(vm_uuid):
            if part == META:
                yield ref

    def find(self, point_id: str) -> PointRef:
        """The point of that id: one existence check per VM, not a listing of points."""
        check_point_id(point_id)
        for vm in self.storage.children(PREFIX):
            if _VM_UUID.fullmatch(vm) and self.exists(ref := PointRef(vm, point_id)):
                return ref
        raise PointNotFoundError(f"no restore point {point_id}")

    def exists(self, ref: PointRef) -> bool:
        return self.storage.exists(ref.meta)

    def load(self, ref: PointRef) -> Point:
        name = f"point metadata {self.storage.location(ref.meta)}"
        try:
            data = self.storage.read(ref.meta)
        except MissingObjectError:
            raise PointNotFoundError(f"no restore point {ref.point_id} (removed?)") from None
        point = Point.from_json(self._unseal(data, name), name)
        if point.id != ref.point_id or point.vm_uuid != ref.vm_uuid:
            raise CorruptObjectError(name, "metadata does not match its location")
        return point

    def load_map(self, ref: PointRef, disk: PointDisk) -> DiskMap:
        obj = ref.map(disk.key)
        name = f"map of disk {disk.key} {self.storage.location(obj)}"
        try:
            data = self.storage.read(obj)
        except MissingObjectError:
            raise CorruptObjectError(name, "map file is missing") from None
        tag = self.map_tagger(ref.vm_uuid, ref.point_id, disk.key)
        m = DiskMap.decode(data, name, tag, keyed=self.auth.keyed)
        if m.capacity != disk.capacity:
            raise CorruptObjectError(name, f"capacity {m.capacity}, metadata says {disk.capacity}")
        if m.chunk_size != self.chunk_size:  # fixed for the repository's life
            raise CorruptObjectError(
                name, f"chunk size {m.chunk_size}, the repository's is {self.chunk_size}"
            )
        return m

    def commit(self, point: Point, maps: Mapping[int, DiskMap]) -> tuple[str, bool]:
        """Write the point durably: every map, then its meta (the commit record: each
        write is atomic, so a crash leaves maps without meta, which no reader sees and gc
        removes, or the whole point). (id, False) when it already existed."""
        ref = PointRef(check_vm_uuid(point.vm_uuid), point.id)
        if self.exists(ref):
            return point.id, False
        try:
            for d in point.disks:
                tag = self.map_tagger(point.vm_uuid, point.id, d.key)
                self.storage.write(ref.map(d.key), maps[d.key].encode(tag))
            self.storage.write(ref.meta, self._seal(point.to_json()))
        except BaseException:
            # A full disk, say: leave nothing (what a removal fails to remove is gc's).
            with contextlib.suppress(RepositoryError):
                self.remove_incomplete(ref)
            raise
        return point.id, True

    def delete(self, ref: PointRef) -> None:
        """Remove the meta first (the point is gone for every reader), then its maps (a
        crash in between leaves maps without meta: gc's to remove)."""
        self.storage.delete(ref.meta)
        self.storage.delete_all(ref.prefix)

    def incomplete(self) -> Iterator[tuple[PointRef, float]]:
        """Points with objects but no meta (a commit or a removal that crashed), with the
        newest mtime of their objects."""
        newest: dict[PointRef, float] = {}
        committed: set[PointRef] = set()
        for ref, part, mtime in self._objects(None):
            if part == META:
                committed.add(ref)
            newest[ref] = max(mtime, newest.get(ref, 0.0))
        for ref, mtime in newest.items():
            if ref not in committed:
                yield ref, mtime

    def remove_incomplete(self, ref: PointRef) -> None:
        if not self.exists(ref):  # committed meanwhile: not ours to remove
            self.storage.delete_all(ref.prefix)


def legacy_leftovers(root: Path) -> Iterator[tuple[Path, float]]:
    """Point directories that crashes of repository code before points were objects left
    (``.tmp-...`` being built, ``.deleted-...`` being removed), with their mtime. Local
    only: S3 repositories never had them."""
    try:
        vms = [e for e in os.scandir(root) if e.is_dir() and _VM_UUID.fullmatch(e.name)]
    except FileNotFoundError:
        return
    for vm in vms:
        try:
            entries = list(os.scandir(vm.path))
        except FileNotFoundError:
            continue
        for e in entries:
            if e.name.startswith((TMP_PREFIX, DELETED_PREFIX)) and e.is_dir():
                try:
                    yield Path(e.path), e.stat().st_mtime
                except FileNotFoundError:
                    continue


def now() -> float:
    return time.time()
