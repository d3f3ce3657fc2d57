"""The ``[repository]`` and ``[writer]`` config sections."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from common.config import Secret
from common.config_problems import Checks
from common.settings import doc
from repository_writer.commit_limits import DEFAULT_MAX_DISK_CAPACITY

if TYPE_CHECKING:  # the repository library only for the roles that open one
    from repository.repository import Repository


@dataclass(frozen=True)
class RepositorySettings:
    path: str = doc(
        "repository directory (shared by all writers of one repository), or"
        " s3://BUCKET/PREFIX (with s3_config; docs/object-storage.md)",
        default="",
    )
    passphrase: Secret | None = doc(
        'passphrase of an encrypted repository: {file = "PATH"}, {env = "NAME"} or inline',
        default=None,
    )
    s3_config: str = doc(
        "S3 config file (endpoint, region, credentials file, CA) of an s3:// path", default=""
    )
    cache_dir: str = doc(
        "s3:// only: local cache (open packs not yet uploaded, the index cache); each"
        " process uses its own subdirectory CACHE_DIR/NAME; "
        '"" = $XDG_CACHE_HOME/vmbackup/<repository id>/NAME',
        default="",
    )

    def __post_init__(self) -> None:
        from repository.repo_location import is_s3
        from repository.s3_config import S3ConfigError, parse_s3_url

        c = Checks()
        if is_s3(self.path):
            try:
                parse_s3_url(self.path)
            except S3ConfigError as exc:
                c.fail("path", str(exc))
            if not self.s3_config:
                c.fail("s3_config", f"required for path = {self.path!r} (an S3 config file)")
        elif self.path and not Path(self.path).is_absolute():
            c.fail("path", f"{self.path!r} must be absolute (or s3://BUCKET/PREFIX)")
        for key in ("s3_config", "cache_dir"):
            value = getattr(self, key)
            if value and not is_s3(self.path):
                c.fail(key, f"only for an s3:// path (path = {self.path!r})", depends=("path",))
            elif value and not Path(value).is_absolute():
                c.fail(key, f"{value!r} must be absolute")
        c.done()

    def open(self, name: str, *, read_only: bool = False) -> Repository:
        """The configured repository, opened by the process called ``name`` (its own
        cache directory on S3: two processes never share open packs or index files)."""
        from repository.repository import Repository

        passphrase = self.passphrase.value if self.passphrase else None
        if not self.s3_config:
            return Repository.open(self.path, passphrase, read_only=read_only)
        return Repository.open(
            self.path,
            passphrase,
            read_only=read_only,
            s3_config=self.s3_config,
            cache_dir=Path(self.cache_dir) if self.cache_dir else None,
            cache_name=name,
        )


@dataclass(frozen=True)
class WriterSettings:
    name: str = doc("writer name (logs, metrics, reply queue prefix)", default="writer")
    shards: str = doc('shards this writer owns: "all", "0-7" or "0,3,5"', default="all")
    prefetch: int = doc(
        "unacked chunk batches held at once over all shard queues (at least one per queue);"
        " times the proxies' batch size, this bounds the writer's memory",
        default=16,
    )
    shard_queue_type: str = doc(
        "classic (default: chunk data needs no broker durability, proxies re-send on a"
        " missing ack) or quorum; must match what the other writers declared",
        default="classic",
    )
    commit_prefetch: int = doc("commit requests handled at once", default=1)
    data_listen: str = doc(
        "HOST:PORT where proxies send chunk batches directly, beside the broker (port 0:"
        ' any free port); "" = chunk batches only through the broker',
        default="",
    )
    data_advertise: str = doc(
        "HOST or HOST:PORT proxies connect to for data_listen (default: this machine's"
        " address on its route to the broker, and the bound port)",
        default="",
    )
    data_tls: str = doc(
        'TLS on the chunk stream: "on", "off" or "auto" (on when broker.url is amqps://);'
        " proxies pin the certificate the writer makes at start (docs/operations.md)",
        default="auto",
    )
    stream_max_connections: int = doc(
        "chunk stream connections open at once (one thread each); those beyond are closed"
        " at once and counted, their proxies use the broker",
        default=64,
    )
    stream_hello_timeout: float = doc(
        "seconds a new chunk stream connection has for TCP, TLS and its hello together",
        default=10.0,
    )
    stream_idle_timeout: float = doc(
        "seconds an authenticated chunk stream may send no frame (with nothing of it in"
        " flight) before it is closed; the proxy opens a new one when it next sends",
        default=300.0,
    )
    max_disk_capacity: int = doc(
        "largest disk capacity (bytes) a commit may declare; larger is refused before"
        " any map is allocated (64 TiB; vSphere's largest virtual disk is 62 TB)",
        default=DEFAULT_MAX_DISK_CAPACITY,
    )
    consume_commits: bool = doc("also consume vmbackup.commits", default=True)
    coordinator_users: list[str] = field(
        default_factory=list,
        metadata={
            "doc": "broker accounts whose commits, commit parts and job markers this writer"
            " accepts (others go to vmbackup.dlq); [] = by name: X-coordinator when this"
            " writer's account is X-writer, else the writer's own account"
        },
    )
    proxy_users: list[str] = field(
        default_factory=list,
        metadata={
            "doc": "broker accounts whose have-replies carry the chunk stream's token;"
            " [] = by name: X-proxy when this writer's account is X-writer, else its own"
        },
    )
    pack_idle_seal: float = doc(
        "seconds an open pack may receive nothing before the writer seals it (version-3"
        " repositories), so the last chunks of a backup window do not wait in open packs"
        " until the next window or the writer's exit; 0 = only at the pack size or exit",
        default=30.0,
    )
    pack_max_age: float = doc(
        "seconds an open pack may stay open at most, however busy, before the writer seals"
        " it (on S3: uploads it, so that another writer's commit of a backup whose chunks"
        " it holds need not wait long); 0 = no limit",
        default=60.0,
    )
    pack_quiet_seal: float = doc(
        "s3:// repositories: seconds with no chunk batch in flight after which the writer"
        " uploads its open packs, so that a commit (on any writer) of the backup that just"
        " sent its last chunks need not wait for pack_idle_seal (up to 8x longer while the"
        " gaps between batches are long: a loaded machine); one partly filled pack per"
        " writer per quiet gap; 0 = off",
        default=0.5,
    )
    s3_commit_wait: float = doc(
        "s3:// repositories: seconds a commit waits for chunks other writers acknowledged"
        " but have not uploaded yet (they do within pack_idle_seal or pack_max_age) before"
        " it is refused as naming missing chunks",
        default=180.0,
    )
    min_free_mib: int = doc(
        "free space (MiB) the repository's file system must keep: below it the writer"
        " refuses chunk batches at once (the job fails fast with 'repository full') and"
        " /ready answers 503, before a write fails halfway; 0 = only a full disk refuses",
        default=256,
    )

    def stream_tls(self, broker_url: str) -> bool:
        """Whether the chunk stream speaks TLS, given where the broker is."""
        if self.data_tls == "auto":
            return broker_url.startswith("amqps://")
        return self.data_tls == "on"

    def __post_init__(self) -> None:
        c = Checks()
        if self.shard_queue_type not in ("classic", "quorum"):
            c.fail("shard_queue_type", f"{self.shard_queue_type!r}: classic or quorum")
        if not 1 <= self.prefetch <= 256:
            c.fail("prefetch", "must be within 1..256")
        if self.data_listen:
            from repository_writer.chunk_stream_server import parse_listen

            c.run("data_listen", lambda: parse_listen(self.data_listen))
        if self.data_tls not in ("on", "off", "auto"):
            c.fail("data_tls", f"{self.data_tls!r}: on, off or auto")
        if self.min_free_mib < 0:
            c.fail("min_free_mib", "must not be negative")
        if not 1 <= self.commit_prefetch <= 16:
            c.fail("commit_prefetch", "must be within 1..16")
        if not 1 <= self.stream_max_connections <= 4096:
            c.fail("stream_max_connections", "must be within 1..4096")
        for key in ("stream_hello_timeout", "stream_idle_timeout"):
            if not 0 < getattr(self, key) <= 86400:
                c.fail(key, "must be above 0 and at most 86400 seconds")
        for key in ("pack_idle_seal", "pack_max_age", "pack_quiet_seal", "s3_commit_wait"):
            if not 0 <= getattr(self, key) <= 86400:
                c.fail(key, "must be within 0..86400 seconds")
        if not 1 << 20 <= self.max_disk_capacity <= 1 << 50:
            c.fail("max_disk_capacity", "must be within 1 MiB..1 PiB")
        c.done()
