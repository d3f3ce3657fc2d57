"""Message schemas: one msgpack schema per message kind, encoded and decoded strictly.

Every message is a msgpack map ``{"k": kind, "v": version, <fields>...}``. Decoding
checks the kind, the version, that every field is present with the declared type and
that no extra field is there; any violation (and any malformed or truncated input)
raises :class:`MessageError`, never anything else. Consumers dead-letter such messages
with the error text as reason.
"""

from __future__ import annotations

import dataclasses
import struct
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar, Union, get_args, get_origin

import msgpack

# RabbitMQ's default max message size is 128 MiB; stay well below it.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
ID_LEN = 32

Scalar = str | int | float | bool | None


class MessageError(ValueError):
    """A message could not be encoded or decoded; the text says what was wrong."""


@dataclass(frozen=True, slots=True)
class Message:
    KIND: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1


# --- block-range tasks -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BackupTask(Message):
    """Read these ranges of one snapshot disk and hand its chunks to the writers."""

    KIND: ClassVar[str] = "task"
    task_id: str
    job_id: str
    vcenter: str
    datacenter: str
    host: str
    datastore: str
    vm_uuid: str
    vm_moref: str
    vm_name: str
    disk_key: int
    snapshot_moref: str
    disk_file: str  # "[ds] dir/name.vmdk" of the snapshot's frozen disk
    capacity: int
    chunk_size: int
    compression_level: int
    ranges: list[tuple[int, int]]  # (offset, length), chunk aligned; last may end at capacity
    results_to: str
    transport: str = ""  # "" = the proxy's configured default


@dataclass(frozen=True, slots=True)
class TaskResult(Message):
    """Outcome of one task; entries name every chunk of the task's ranges."""

    KIND: ClassVar[str] = "task-result"
    task_id: str
    job_id: str
    vm_uuid: str
    disk_key: int
    ok: bool
    error: str
    entries: list[tuple[int, bytes]]  # (chunk index, id); b"" marks an all-zero chunk
    bytes_read: int
    bytes_zero: int
    bytes_known: int
    bytes_sent: int
    seconds: float
    proxy: str


# --- chunks -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChunkBatch(Message):
    """Chunks of one shard for the writer that owns it."""

    KIND: ClassVar[str] = "chunk-batch"
    batch_id: str
    task_id: str
    reply_to: str
    chunks: list[tuple[bytes, int, bool, bytes]]  # (id, raw_len, compressed, payload)

    def __post_init__(self) -> None:
        _check_ids([c[0] for c in self.chunks], "chunks")


@dataclass(frozen=True, slots=True)
class ChunkAck(Message):
    """Sent by a writer once every chunk of a batch is durable (or already known)."""

    KIND: ClassVar[str] = "chunk-ack"
    batch_id: str
    shard: int
    ok: bool
    error: str
    stored: int
    known: int


@dataclass(frozen=True, slots=True)
class HaveQuery(Message):
    KIND: ClassVar[str] = "have-query"
    query_id: str
    reply_to: str
    ids: list[bytes]

    def __post_init__(self) -> None:
        _check_ids(self.ids, "ids")


@dataclass(frozen=True, slots=True)
class HaveReply(Message):
    KIND: ClassVar[str] = "have-reply"
    query_id: str
    present: list[bool]


# --- restore points -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DiskCommit:
    """One disk of a restore point: the changed chunks on top of a base point's map."""

    key: int
    capacity: int
    change_id: str
    base_point_id: str  # "" = no base: chunks not named are zero
    entries: list[tuple[int, bytes]]  # (chunk index, id); b"" = zero chunk
    info: dict[str, Scalar]  # backing file, datastore, controller key/unit, label...
    # CommitParts staged for this disk under the request's id (numbered 0..parts-1);
    # their entries apply before ``entries``. 0 = everything is inline.
    parts: int = 0

    def __post_init__(self) -> None:
        if self.parts < 0:
            raise MessageError(f"disk {self.key}: parts {self.parts} must not be negative")


@dataclass(frozen=True, slots=True)
class CommitRequest(Message):
    """Commit one VM's point. Version 2: DiskCommit.parts (staged CommitParts)."""

    KIND: ClassVar[str] = "commit"
    VERSION: ClassVar[int] = 2
    request_id: str
    reply_to: str
    job_id: str
    vcenter: str
    vm_uuid: str
    vm_moref: str
    vm_name: str
    vm_config: bytes  # the VM's config as the API returned it, serialized
    status: str  # "complete" | "partial"
    snapshot_time: float
    disks: list[DiskCommit]
    failed_disks: list[tuple[int, str]]  # (disk key, reason)


@dataclass(frozen=True, slots=True)
class CommitReply(Message):
    """A writer's answer on the commits queue: to a CommitRequest (point_id set), a
    CommitPart (request_id = its part_id) or a JobMarker (point_id "")."""

    KIND: ClassVar[str] = "commit-reply"
    request_id: str
    ok: bool
    error: str
    point_id: str


@dataclass(frozen=True, slots=True)
class CommitPart(Message):
    """A slice of one disk's commit entries, staged durably by a writer until the
    CommitRequest with ``request_id`` names it (DiskCommit.parts). Lets a commit of a
    disk of millions of chunks stay far below the message limit."""

    KIND: ClassVar[str] = "commit-part"
    request_id: str  # of the CommitRequest that will name this part
    part_id: str  # the reply's request_id: part_key(request_id, disk_key, part)
    reply_to: str
    disk_key: int
    part: int  # 0 .. parts-1
    entries: bytes  # pack_entries() format

    def __post_init__(self) -> None:
        if self.part < 0:
            raise MessageError(f"part {self.part} must not be negative")
        if self.part_id != part_key(self.request_id, self.disk_key, self.part):
            raise MessageError(f"part_id {self.part_id!r:.80} does not match the part")
        for _ in iter_packed(self.entries):
            pass  # validates the structure


@dataclass(frozen=True, slots=True)
class JobMarker(Message):
    """Ask a writer to mark a backup job as running ("begin") or finished ("end") in
    the repository, so that gc keeps every chunk the job may deduplicate against
    (the coordinator has no write access to the repository)."""

    KIND: ClassVar[str] = "job-marker"
    request_id: str
    reply_to: str
    job_id: str
    op: str  # "begin" | "end"

    def __post_init__(self) -> None:
        if self.op not in ("begin", "end"):
            raise MessageError(f"op {self.op!r:.40} is not 'begin' or 'end'")
        if not self.job_id:
            raise MessageError("job_id is empty")


# --- observability ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobEvent(Message):
    KIND: ClassVar[str] = "job-event"
    job_id: str
    event: str
    vm: str
    disk_key: int
    ts: float
    fields: dict[str, Scalar] = field(default_factory=dict)


KINDS: dict[str, type[Message]] = {
    cls.KIND: cls
    for cls in (
        BackupTask,
        TaskResult,
        ChunkBatch,
        ChunkAck,
        HaveQuery,
        HaveReply,
        CommitRequest,
        CommitReply,
        CommitPart,
        JobMarker,
        JobEvent,
    )
}

M = TypeVar("M", bound=Message)

# --- packed commit entries ----------------------------------------------------------
#
# A sequence of runs of consecutive chunk indexes, ascending and not overlapping:
#   start u64 BE, count u32 BE (>= 1), kind u8 (0 = all-zero chunks, 1 = ids),
#   then for kind 1 ``count`` ids of 32 bytes.
# A zero run costs 13 bytes whatever its length; an id costs 32 bytes (msgpack
# pairs cost about 40).

_RUN = struct.Struct(">QIB")
RUN_ZERO = 0
RUN_IDS = 1


def part_key(request_id: str, disk_key: int, part: int) -> str:
    return f"{request_id}/{disk_key}/{part}"


def pack_entries(entries: list[tuple[int, bytes]]) -> bytes:
    """Pack (index, id) pairs sorted by index (b"" = zero chunk) into runs."""
    out = bytearray()
    i = 0
    n = len(entries)
    prev_end = -1
    while i < n:
        start, cid = entries[i]
        if start < 0 or start <= prev_end - 1 or start > 2**64 - 1:
            raise MessageError(f"entries: index {start} out of order or out of range")
        kind = RUN_ZERO if cid == b"" else RUN_IDS
        j = i + 1
        while (
            j < n
            and j - i < 0xFFFFFFFF
            and entries[j][0] == start + (j - i)
            and (entries[j][1] == b"") == (kind == RUN_ZERO)
        ):
            j += 1
        out += _RUN.pack(start, j - i, kind)
        if kind == RUN_IDS:
            for _idx, c in entries[i:j]:
                if len(c) != ID_LEN:
                    raise MessageError(f"entries: chunk id of {len(c)} bytes, expected {ID_LEN}")
                out += c
        prev_end = start + (j - i)
        i = j
    return bytes(out)


def iter_packed(data: bytes) -> typing.Iterator[tuple[int, int, bytes | None]]:
    """Runs (start, count, ids or None for zeros) of packed entries, checked strictly."""
    view = memoryview(data)
    pos = 0
    prev_end = 0
    first = True
    while pos < len(view):
        if len(view) - pos < _RUN.size:
            raise MessageError(f"packed entries: truncated run header at byte {pos}")
        start, count, kind = _RUN.unpack_from(view, pos)
        pos += _RUN.size
        if count == 0:
            raise MessageError(f"packed entries: empty run at index {start}")
        if not first and start < prev_end:
            raise MessageError(f"packed entries: run at index {start} overlaps or is unsorted")
        if kind == RUN_ZERO:
            ids = None
        elif kind == RUN_IDS:
            size = count * ID_LEN
            if len(view) - pos < size:
                raise MessageError(f"packed entries: run at index {start} is truncated")
            ids = bytes(view[pos : pos + size])
            pos += size
        else:
            raise MessageError(f"packed entries: unknown run kind {kind} at index {start}")
        first = False
        prev_end = start + count
        yield start, count, ids


def unpack_entries(data: bytes) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    for start, count, ids in iter_packed(data):
        if ids is None:
            out.extend((start + k, b"") for k in range(count))
        else:
            out.extend((start + k, ids[k * ID_LEN : (k + 1) * ID_LEN]) for k in range(count))
    return out


# --- strict validation --------------------------------------------------------------

_hints_cache: dict[type, dict[str, Any]] = {}


def _hints(cls: Any) -> dict[str, Any]:
    h = _hints_cache.get(cls)
    if h is None:
        every = typing.get_type_hints(cls)
        h = {f.name: every[f.name] for f in dataclasses.fields(cls)}
        _hints_cache[cls] = h
    return h


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp)


def _check(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` (as msgpack decoded it) against ``tp``; return the typed value."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        errors = []
        for alt in get_args(tp):
            try:
                return _check(value, alt, where)
            except MessageError as exc:
                errors.append(str(exc))
        raise MessageError(f"{where}: {type(value).__name__} is not {tp}")
    if tp is type(None):
        if value is not None:
            raise MessageError(f"{where}: expected nil, got {type(value).__name__}")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise MessageError(f"{where}: expected bool, got {type(value).__name__}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise MessageError(f"{where}: expected int, got {type(value).__name__}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise MessageError(f"{where}: expected float, got {type(value).__name__}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise MessageError(f"{where}: expected str, got {type(value).__name__}")
        return value
    if tp is bytes:
        if not isinstance(value, bytes):
            raise MessageError(f"{where}: expected bytes, got {type(value).__name__}")
        return value
    if origin is list:
        (item_tp,) = get_args(tp)
        if not isinstance(value, list | tuple):
            raise MessageError(f"{where}: expected array, got {type(value).__name__}")
        return [_check(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        item_tps = get_args(tp)
        if not isinstance(value, list | tuple) or len(value) != len(item_tps):
            raise MessageError(f"{where}: expected array of {len(item_tps)} items")
        return tuple(
            _check(v, t, f"{where}[{i}]")
            for i, (v, t) in enumerate(zip(value, item_tps, strict=True))
        )
    if origin is dict:
        key_tp, val_tp = get_args(tp)
        if not isinstance(value, dict):
            raise MessageError(f"{where}: expected map, got {type(value).__name__}")
        return {
            _check(k, key_tp, f"{where} key"): _check(v, val_tp, f"{where}[{k!r}]")
            for k, v in value.items()
        }
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise MessageError(f"{where}: expected map for {_type_name(tp)}")
        return _from_fields(tp, value, where)
    raise MessageError(f"{where}: unsupported schema type {tp}")  # a bug in this module


def _from_fields(cls: Any, data: dict[Any, Any], where: str) -> Any:
    hints = _hints(cls)
    extra = [k for k in data if k not in hints]
    if extra:
        raise MessageError(f"{where}: unexpected field(s) {', '.join(map(repr, extra))}")
    kwargs = {}
    for name, tp in hints.items():
        if name not in data:
            raise MessageError(f"{where}: missing field {name!r}")
        kwargs[name] = _check(data[name], tp, f"{where}.{name}")
    try:
        return cls(**kwargs)
    except MessageError as exc:
        raise MessageError(f"{where}: {exc}") from None


def _check_ids(ids: Any, what: str) -> None:
    for i, cid in enumerate(ids):
        if len(cid) != ID_LEN:
            raise MessageError(f"{what}[{i}]: chunk id of {len(cid)} bytes, expected {ID_LEN}")


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    return value


# --- public API ---------------------------------------------------------------------


def encode(msg: Message) -> bytes:
    """Serialize ``msg``; raises MessageError when a field has the wrong type or it is too big."""
    cls = type(msg)
    if cls.KIND not in KINDS:
        raise MessageError(f"not a message kind: {cls.__name__}")
    body = _to_plain(msg)
    # Validate on the way out too: a bad message is the sender's bug, caught at its source.
    _from_fields(cls, body, cls.KIND)
    out = msgpack.packb({"k": cls.KIND, "v": cls.VERSION, **body}, use_bin_type=True)
    if len(out) > MAX_MESSAGE_BYTES:
        raise MessageError(f"{cls.KIND}: {len(out)} bytes exceeds limit {MAX_MESSAGE_BYTES}")
    return out


@typing.overload
def decode(data: bytes, expect: type[M]) -> M: ...
@typing.overload
def decode(data: bytes, expect: None = None) -> Message: ...


def decode(data: bytes, expect: type[Message] | None = None) -> Message:
    """Parse and validate one message; ``expect`` restricts the accepted kind."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MessageError(f"message body must be bytes, got {type(data).__name__}")
    if len(data) > MAX_MESSAGE_BYTES:
        raise MessageError(f"message of {len(data)} bytes exceeds limit {MAX_MESSAGE_BYTES}")
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
        )
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise MessageError(f"not valid msgpack: {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, dict):
        raise MessageError(f"message must be a map, got {type(obj).__name__}")
    kind = obj.pop("k", None)
    version = obj.pop("v", None)
    if not isinstance(kind, str):
        raise MessageError("message has no kind field 'k'")
    cls = KINDS.get(kind)
    if cls is None:
        raise MessageError(f"unknown message kind {kind!r}")
    if expect is not None and cls is not expect:
        raise MessageError(f"expected a {expect.KIND!r} message, got {kind!r}")
    if version != cls.VERSION:
        raise MessageError(f"{kind}: unsupported version {version!r} (supported: {cls.VERSION})")
    try:
        return _from_fields(cls, obj, kind)
    except RecursionError:
        raise MessageError(f"{kind}: nesting too deep") from None
