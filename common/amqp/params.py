"""Connection parameters, reconnect backoff and the blocking-connection helpers."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import pika
import pika.exceptions

from common import amqp_wire, broker_tls
from common.redact import redact_url

RECV_BYTES = amqp_wire.RECV_BYTES


@dataclass(frozen=True)
class BrokerParams:
    """Everything needed to open a connection (built from ``BrokerSettings``)."""

    url: str = "amqp://guest@127.0.0.1:5672/%2F"
    password: str = "guest"
    # The account; "" = the user named in ``url`` (else guest). One account per role
    # (docs/security.md "Broker accounts").
    user: str = ""
    heartbeat: int = 30
    connect_timeout: float = 10.0
    delivery_limit: int = 5
    reconnect_max: float = 30.0
    confirm_window: int = 64
    publish_retries: int = 5
    ca_file: str | None = None  # PEM bundle for amqps:// (None: the system store)
    require_tls: bool = False
    # RabbitMQ's own default max_message_size: a bigger body is refused before sending.
    max_message_bytes: int = 128 * 1024 * 1024

    @classmethod
    def from_settings(cls, s: Any) -> BrokerParams:
        return cls(
            url=s.url,
            password=s.password.value,
            user=s.user.value,
            heartbeat=s.heartbeat_seconds,
            connect_timeout=s.connect_timeout_seconds,
            delivery_limit=s.delivery_limit,
            reconnect_max=s.reconnect_max_seconds,
            confirm_window=s.confirm_window,
            publish_retries=s.publish_retries,
            ca_file=s.ca_file,
            require_tls=s.require_tls,
            max_message_bytes=s.max_message_bytes,
        )

    def __repr__(self) -> str:
        # Never the password, neither the field nor one inside the URL.
        return f"BrokerParams(url={redact_url(self.url)!r}, password=<hidden>)"

    __str__ = __repr__

    @property
    def account(self) -> str:
        """The broker user this process connects as (and stamps as ``user_id``)."""
        return self.user or unquote(urlsplit(self.url).username or "guest")

    @property
    def vhost(self) -> str:
        path = urlsplit(self.url).path
        return unquote(path[1:]) if len(path) > 1 else "/"

    def host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        return parts.hostname or "127.0.0.1", parts.port or (
            5671 if parts.scheme == "amqps" else 5672
        )

    def with_vhost(self, vhost: str) -> BrokerParams:
        parts = urlsplit(self.url)
        url = parts._replace(path="/" + quote(vhost, safe="")).geturl()
        return BrokerParams(**{**self.__dict__, "url": url})

    def pika_params(self, name: str) -> pika.ConnectionParameters:
        # Every connection of ours is opened from these parameters: before the first one,
        # pika's frame reader and writer are replaced by ours (common/amqp_wire.py: fewer
        # copies, and undecodable content headers dead-lettered instead of dropping the
        # connection). Not on import: a process that imports this opens nothing unasked.
        amqp_wire.install()
        parts = urlsplit(self.url)
        if parts.scheme not in ("amqp", "amqps"):
            raise ValueError(
                f"broker.url must start with amqp:// or amqps://, got {redact_url(self.url)!r}"
            )
        broker_tls.check_url(self.url, self.require_tls)
        password = unquote(parts.password) if parts.password else self.password
        host, port = self.host_port()
        params = pika.ConnectionParameters(
            host=host,
            port=port,
            virtual_host=self.vhost,
            credentials=pika.PlainCredentials(self.account, password),
        )
        if parts.scheme == "amqps":
            params.ssl_options = pika.SSLOptions(broker_tls.client_context(self.ca_file), host)
        params.heartbeat = self.heartbeat
        params.blocked_connection_timeout = max(60.0, 4.0 * self.heartbeat)
        params.socket_timeout = self.connect_timeout
        params.stack_timeout = self.connect_timeout * 2
        params.connection_attempts = 1
        params.client_properties = {"connection_name": name, "product": "vmbackup"}
        return params

    def certificate_error(self, exc: BaseException) -> broker_tls.BrokerCertificateError | None:
        """``exc`` as a clear error naming this broker, if it is a certificate failure."""
        return broker_tls.certificate_error(exc, *self.host_port(), self.ca_file)


def backoff_delay(attempt: int, cap: float, base: float = 0.25) -> float:
    """Exponential backoff with full jitter around the exponential step."""
    step = min(cap, base * (2 ** min(attempt, 16)))
    return step * random.uniform(0.5, 1.0)


def open_blocking(params: BrokerParams, name: str) -> pika.BlockingConnection:
    try:
        return pika.BlockingConnection(params.pika_params(name))
    except (pika.exceptions.AMQPError, OSError) as exc:
        # A certificate that does not verify will not verify on a retry either.
        cert = params.certificate_error(exc)
        if cert is not None:
            raise cert from exc
        raise


def wait_ready(
    ready: threading.Event,
    timeout: float,
    error: Callable[[], Exception | None],
    stopped: threading.Event | None = None,
) -> bool:
    """``ready.wait(timeout)`` that raises ``error()`` as soon as there is one, and gives
    up (False) as soon as ``stopped`` is set."""
    deadline = time.monotonic() + timeout
    while not ready.wait(min(0.1, max(0.0, deadline - time.monotonic()))):
        if (exc := error()) is not None:
            raise exc
        if time.monotonic() >= deadline or (stopped is not None and stopped.is_set()):
            return False
    return True


def pump(conn: pika.BlockingConnection, time_limit: float) -> None:
    """Run the connection's I/O for up to ``time_limit`` seconds.

    When the broker closes the connection while a callback scheduled from another thread
    (an ack) runs, pika 1.x may raise ``ValueError("Timeout closed before call")`` from
    its closed ioloop instead of a connection error: report it as the connection loss it
    is, so the caller reconnects instead of its thread dying.
    """
    try:
        conn.process_data_events(time_limit=time_limit)
    except ValueError as exc:
        if conn.is_open:
            raise
        raise pika.exceptions.AMQPConnectionError(f"connection closed: {exc}") from exc
