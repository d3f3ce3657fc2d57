"""The ``[proxy]`` config section (dataclasses loaded by common.config), and the vCenter
access the transports need, taken from the shared top-level ``[[vcenters]]`` list.

Validation raises ValueError naming the key; common.config turns it into a ConfigError.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from common.config import Secret
from common.config_problems import Checks
from common.redact import redact_url
from proxy_worker.errors import ConfigError

TRANSPORTS = ("nbd", "http", "file")
_THUMB = re.compile(r"^([0-9a-f]{2}:?){19}[0-9a-f]{2}$|^([0-9a-f]{2}:?){31}[0-9a-f]{2}$", re.I)
MiB = 1 << 20


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass(frozen=True)
class VCenterAccess:
    """How the proxy reaches one vCenter/ESXi named by tasks' ``vcenter`` field."""

    name: str
    url: str
    user: str = ""
    password: str = ""
    password_file: str = ""  # when the secret came from a file (VDDK wants password=+FILE)
    ca_bundle: str = ""
    thumbprint: str = ""  # SHA-256 pin of the TLS certificate
    insecure: bool = False
    vddk_thumbprint: str = ""  # what VDDK expects (SHA-1 on older releases); default thumbprint

    def __repr__(self) -> str:
        # Never the password, neither the field nor one inside the URL.
        return (
            f"VCenterAccess(name={self.name!r}, url={redact_url(self.url)!r},"
            f" user={self.user!r}, password=<hidden>, insecure={self.insecure})"
        )

    __str__ = __repr__

    def __post_init__(self) -> None:
        if not self.url.startswith(("https://", "http://")):
            raise ValueError(
                f"vCenter {self.name!r}: url {redact_url(self.url)!r} must start with https://"
            )
        for key in ("thumbprint", "vddk_thumbprint"):
            v = getattr(self, key)
            if v and not _THUMB.match(v):
                raise ValueError(f"vCenter {self.name!r}: {key} {v!r} is not a SHA-1/SHA-256 hex")

    @classmethod
    def from_config(cls, vc: Any, vddk_thumbprint: str = "") -> VCenterAccess:
        """From an entry of the shared ``vcenters`` list (coordinator.settings.VCenterSettings)."""
        pw = vc.password
        source = getattr(pw, "source", "")
        return cls(
            name=vc.name,
            url=vc.url,
            user=getattr(vc.user, "value", vc.user),
            password=getattr(pw, "value", pw),
            password_file=source[5:] if source.startswith("file ") else "",
            ca_bundle=vc.ca_bundle,
            thumbprint=vc.thumbprint,
            insecure=vc.insecure,
            vddk_thumbprint=vddk_thumbprint,
        )


class VCenterDirectory:
    """Looks up the vCenter a task names: by name, else by the host part of its url."""

    def __init__(self, vcenters: list[VCenterAccess]) -> None:
        self._all = list(vcenters)

    def get(self, name: str) -> VCenterAccess:
        for vc in self._all:
            if vc.name == name:
                return vc
        for vc in self._all:
            if vc.url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0] == name:
                return vc
        raise ConfigError(f"vCenter {name!r} is not in the config's [[vcenters]]")


@dataclass(frozen=True)
class NbdSettings:
    server: str = field(
        default="vddk",
        metadata=_doc('"vddk" (production) or "file" (nbdkit file plugin, mounted datastore)'),
    )
    nbdkit: str = field(default="nbdkit", metadata=_doc("nbdkit executable"))
    in_flight: int = field(default=4, metadata=_doc("NBD read requests in flight per disk stream"))
    vddk_libdir: str = field(
        default="/opt/vmware-vix-disklib-distrib", metadata=_doc("VDDK library directory (libdir=)")
    )
    vddk_transports: str = field(
        default="hotadd:nbdssl:nbd", metadata=_doc("VDDK transport modes in order")
    )
    vddk_config: str = field(default="", metadata=_doc("optional VDDK config file (config=)"))
    vddk_thumbprints: dict[str, str] = field(
        default_factory=dict,
        metadata=_doc(
            "vCenter name -> thumbprint in the form VDDK expects, when it differs from the SHA-256 "
            "pin (older VDDK releases want SHA-1)"
        ),
    )

    def __post_init__(self) -> None:
        c = Checks()
        if self.server not in ("vddk", "file"):
            c.fail("server", f"must be 'vddk' or 'file', not {self.server!r}")
        if not 1 <= self.in_flight <= 64:
            c.fail("in_flight", "must be within 1..64")
        for name, thumb in self.vddk_thumbprints.items():
            if not _THUMB.match(thumb):
                c.fail(f"vddk_thumbprints.{name}", f"{thumb!r} is not a SHA-1/SHA-256 hex")
        c.done()


@dataclass(frozen=True)
class HttpSettings:
    pool_size: int = field(default=4, metadata=_doc("keep-alive connections kept per server"))
    timeout: float = field(default=60.0, metadata=_doc("seconds per socket operation"))
    retries: int = field(
        default=5, metadata=_doc("consecutive failures without progress before a read fails")
    )
    backoff: float = field(default=0.2, metadata=_doc("first retry delay in seconds (doubles)"))
    request_bytes: int = field(
        default=8 * MiB,
        metadata=_doc("adjacent chunks read with one GET, up to this many bytes (>= 1 chunk)"),
    )
    requests_in_flight: int = field(
        default=2,
        metadata=_doc(
            "ranged GETs of one disk at once, each on its own connection (<= pool_size); "
            "a host sees up to throttle.max_streams_per_host x this many; fewer where "
            "tasks_in_parallel x this x request_bytes would exceed memory_limit_mib / 2"
        ),
    )

    def __post_init__(self) -> None:
        c = Checks()
        if self.pool_size < 1:
            c.fail("pool_size", "must be >= 1")
        if self.timeout <= 0:
            c.fail("timeout", "must be > 0")
        if self.retries < 0:
            c.fail("retries", "must be >= 0")
        if self.backoff < 0:
            c.fail("backoff", "must be >= 0")
        if not 0 < self.request_bytes <= 64 * MiB:
            c.fail("request_bytes", "must be within 1..64 MiB")
        if not 1 <= self.requests_in_flight <= self.pool_size:
            c.fail(
                "requests_in_flight",
                "must be within 1..pool_size",
                depends=["requests_in_flight", "pool_size"],
            )
        c.done()


@dataclass(frozen=True)
class ThrottleSettings:
    max_streams_per_host: int = field(
        default=8,
        metadata=_doc(
            "concurrent disk streams per ESXi host (NFC allows ~48 1 MB streams per host)"
        ),
    )
    max_mb_per_s_per_host: float = field(
        default=0.0, metadata=_doc("read MB/s (10^6 bytes) per host; 0 = no cap")
    )
    burst_mb: float = field(
        default=4.0, metadata=_doc("token bucket depth in MB (short bursts above the rate)")
    )

    def __post_init__(self) -> None:
        c = Checks()
        if self.max_streams_per_host < 1:
            c.fail("max_streams_per_host", "must be >= 1")
        if self.max_mb_per_s_per_host < 0:
            c.fail("max_mb_per_s_per_host", "must be >= 0")
        if self.burst_mb <= 0:
            c.fail("burst_mb", "must be > 0")
        c.done()


@dataclass(frozen=True)
class ProxySettings:
    name: str = field(
        default="proxy", metadata=_doc("proxy name, reported in task results and metrics")
    )
    queues: list[str] = field(
        default_factory=list,
        metadata=_doc('task routing keys this proxy consumes: "host.<name>" or "datastore.<name>"'),
    )
    transport: str = field(
        default="nbd",
        metadata=_doc('default transport when a task names none: "nbd", "http" or "file"'),
    )
    datastore_mounts: dict[str, str] = field(
        default_factory=dict,
        metadata=_doc(
            "datastore name -> local directory where it is mounted (file transport, nbd file "
            "server)"
        ),
    )
    nbd: NbdSettings = field(default_factory=NbdSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    throttle: ThrottleSettings = field(default_factory=ThrottleSettings)
    tasks_in_parallel: int = field(
        default=2, metadata=_doc("tasks processed at once (one disk stream each)")
    )
    pipeline_workers: int = field(
        default=2, metadata=_doc("hash + compress threads (BLAKE3/zstd release the GIL)")
    )
    memory_limit_mib: int = field(
        default=96,
        metadata=_doc(
            "chunk bytes in flight, all tasks together (the process's resident size is about "
            "this + 125 MiB: bench/RESULTS.md, Proxy)"
        ),
    )
    batch_bytes: int = field(
        default=4 * MiB, metadata=_doc("payload bytes per chunk batch message")
    )
    have_batch: int = field(default=256, metadata=_doc("chunk ids per have-query"))
    persistent_chunks: bool = field(
        default=False,
        metadata=_doc(
            "publish chunk batches as persistent messages (not needed: a task is acked only after "
            "the writers' fsync acks; see bench/RESULTS.md)"
        ),
    )
    id_key: Secret = field(
        default=Secret("", "none"),
        metadata=_doc(
            "hex of the repository's chunk-id key (encrypted repositories; `vmbackup repo"
            ' id-key` shows it): inline, {file = "PATH"} or {env = "NAME"}; empty = unkeyed ids'
        ),
    )
    writer_timeout: float = field(
        default=120.0, metadata=_doc("seconds to wait for a chunk ack or have-reply")
    )
    stage_entries: bool = field(
        default=True,
        metadata=_doc(
            "stage each task's map entries at the writers (TaskEntries) and report only their"
            " digest, so a disk's map crosses the network once; false: send them inline in"
            " the task result (for writers older than the coordinator's commit version 3)"
        ),
    )
    chunk_streams: bool = field(
        default=True,
        metadata=_doc(
            "send chunk batches on the chunk stream a writer offers (writer.data_listen) "
            "instead of through the broker; false: always the broker"
        ),
    )

    def __post_init__(self) -> None:
        c = Checks()
        if self.transport not in TRANSPORTS:
            c.fail("transport", f"must be one of {TRANSPORTS}, not {self.transport!r}")
        for i, q in enumerate(self.queues):
            kind, _, name = q.partition(".")
            if kind not in ("host", "datastore") or not name:
                c.fail(f"queues[{i}]", f"{q!r}: expected host.<name> or datastore.<name>")
        for key in ("tasks_in_parallel", "pipeline_workers"):
            if getattr(self, key) < 1:
                c.fail(key, "must be >= 1")
        if self.memory_limit_mib < 16:
            c.fail("memory_limit_mib", "must be >= 16")
        # an http request being read holds its chunks' budget before the reader can hand
        # any on; with the windows being filled (half the budget) one request per task must
        # leave the rest free (more in flight are allowed only as far as they fit, below)
        held = self.tasks_in_parallel * self.http.request_bytes
        if held > self.readers_share():
            c.fail(
                "tasks_in_parallel",
                f"proxy.tasks_in_parallel x proxy.http.request_bytes ({held // MiB} MiB) must "
                f"be at most half of proxy.memory_limit_mib ({self.memory_limit_mib} MiB)",
                depends=["tasks_in_parallel", "http", "memory_limit_mib"],
            )
        if not MiB // 4 <= self.batch_bytes <= 32 * MiB:
            c.fail("batch_bytes", "must be within 256 KiB..32 MiB")
        if not 1 <= self.have_batch <= 10000:
            c.fail("have_batch", "must be within 1..10000")
        v = self.id_key.value.strip()
        if v and (len(v) != 64 or any(ch not in "0123456789abcdefABCDEF" for ch in v)):
            c.fail("id_key", "must be 64 hex digits (a 32-byte key)")
        if self.writer_timeout <= 0:
            c.fail("writer_timeout", "must be > 0")
        c.done()

    def readers_share(self) -> int:
        """Bytes of the memory budget the readers of all tasks may hold at once: half of it,
        so that what is downstream of them (hashing, queries, sends) can always drain."""
        return self.memory_limit_mib * MiB // 2

    def window_bytes(self, chunk_size: int) -> int:
        """Chunk bytes a task hands from one pipeline stage to the next at once: half of its
        share of the memory budget. The windows being filled by the readers of all tasks
        then never hold the whole budget, so what is downstream can always drain."""
        return max(chunk_size, self.readers_share() // self.tasks_in_parallel)

    def http_settings(self) -> HttpSettings:
        """``http`` with requests_in_flight lowered to what the memory budget holds: the
        requests of all tasks together at most half of it (see __post_init__)."""
        per_request = self.tasks_in_parallel * self.http.request_bytes
        fits = self.readers_share() // per_request
        return replace(self.http, requests_in_flight=min(self.http.requests_in_flight, fits))

    def chunk_id_key(self) -> bytes | None:
        v = self.id_key.value.strip()
        return bytes.fromhex(v) if v else None

    def mount_of(self, datastore: str) -> str:
        mount = self.datastore_mounts.get(datastore)
        if mount is None:
            raise ConfigError(f"datastore {datastore!r} has no entry in proxy.datastore_mounts")
        return mount
