"""The config sections every role shares ([broker], [log], [metrics]) and ``doc``.

Roles declare their own sections in ``<package>/settings.py``; the whole schema (one file
configures every role, so an unknown key anywhere is an error) is their union, made by
the application package (vmbackup/config_schema.py), which knows every role.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from common import broker_tls
from common.config import Secret
from common.config_problems import Checks


def doc(text: str, **kw: Any) -> Any:
    """A dataclass field with documentation (and a default, via kw)."""
    return field(metadata={"doc": text}, **kw)


@dataclass(frozen=True)
class BrokerSettings:
    url: str = doc(
        "AMQP URL of RabbitMQ, without the password (amqp://USER@HOST:PORT/VHOST)",
        default="amqp://guest@127.0.0.1:5672/%2F",
    )
    user: Secret = doc(
        'broker account: inline, {file = "PATH"} or {env = "NAME"}; "" = the user in url'
        " (one account per role: docs/security.md)",
        default=Secret("", "default"),
    )
    password: Secret = doc(
        'broker password: inline, {file = "PATH"} or {env = "NAME"}',
        default=Secret("guest", "default"),
    )
    ca_file: str | None = doc(
        "PEM CA bundle that amqps:// verifies the broker's certificate against (its chain"
        " and host name); unset = the system CA store",
        default=None,
    )
    require_tls: bool = doc(
        "refuse a plain amqp:// url to a non-loopback host (the production manifests set it)",
        default=False,
    )
    heartbeat_seconds: int = doc("AMQP heartbeat interval", default=30)
    connect_timeout_seconds: float = doc("TCP connect / handshake timeout", default=10.0)
    delivery_limit: int = doc(
        "deliveries of one message before it is dead-lettered to vmbackup.dlq", default=5
    )
    reconnect_max_seconds: float = doc("cap of the reconnect backoff", default=30.0)
    confirm_window: int = doc("publisher: unconfirmed messages in flight at most", default=64)
    publish_retries: int = doc("publisher: attempts for one message before failing", default=5)
    max_message_bytes: int = doc(
        "publisher: a bigger message body is dropped with a clear error, never sent; set it"
        " to the broker's max_message_size (RabbitMQ's default: 128 MiB; 16 MiB from 4.0)",
        default=128 * 1024 * 1024,
    )
    n_shards: int = doc("writer hash shards (chunk id prefix -> shard -> queue)", default=16)

    def __post_init__(self) -> None:
        c = Checks()
        c.run(
            "url",
            lambda: broker_tls.check_url(self.url, self.require_tls),
            depends=["url", "require_tls"],
        )
        if self.heartbeat_seconds < 0:
            c.fail("heartbeat_seconds", "must be >= 0")
        if self.delivery_limit < 1:
            c.fail("delivery_limit", "must be >= 1")
        if self.confirm_window < 1:
            c.fail("confirm_window", "must be >= 1")
        if self.max_message_bytes < 1:
            c.fail("max_message_bytes", "must be >= 1")
        if not 1 <= self.n_shards <= 4096:
            c.fail("n_shards", "must be within 1..4096")
        c.done()


@dataclass(frozen=True)
class LogSettings:
    level: str = doc("debug, info, warning or error", default="info")
    format: str = doc("auto (key=value on a TTY, else JSON lines), json or console", default="auto")

    def __post_init__(self) -> None:
        c = Checks()
        if self.level.lower() not in {"debug", "info", "warning", "error"}:
            c.fail("level", f"unknown level {self.level!r}: debug, info, warning or error")
        if self.format not in {"auto", "json", "console"}:
            c.fail("format", f"unknown format {self.format!r}: auto, json or console")
        c.done()


@dataclass(frozen=True)
class MetricsSettings:
    port: int = doc("port of the /metrics endpoint (0 = none)", default=9400)
    address: str = doc(
        "address the /metrics endpoint binds to: loopback unless set (the Kubernetes"
        ' manifests set "0.0.0.0" for Prometheus)',
        default="127.0.0.1",
    )

    def __post_init__(self) -> None:
        c = Checks()
        if not 0 <= self.port <= 65535:
            c.fail("port", f"{self.port} out of range 0..65535")
        c.done()
