"""The metric families every process shares, and the /metrics endpoint.

Here: build info and messaging (common/amqp/), on prometheus_client's default registry
with its process and Python collectors. Each role declares its own families on its own
registry (coordinator/metrics.py, proxy_worker/metrics.py, repository_writer/metrics.py,
and repository/metrics.py for the repository the writer serves), and its process serves
only those beside these (common/role_startup.py): a writer shows no coordinator family.
Dashboards and alerts (k8s/) are checked against these modules, so a metric is declared
in one of them, never ad hoc. Names: ``vmbackup_`` prefix, base units, ``_total`` for
counters, ``_bytes`` / ``_seconds`` for units.
"""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

from common import health

# Buckets for latencies from sub-millisecond fsyncs to multi-minute tasks.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
TASK_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)

# --- process -------------------------------------------------------------------------
BUILD_INFO = Gauge("vmbackup_build_info", "Version of the running vmbackup", ["version", "role"])

# --- messaging (common/amqp.py) ------------------------------------------------------
AMQP_PUBLISHED = Counter(
    "vmbackup_amqp_published_total", "Messages confirmed by the broker", ["kind"]
)
AMQP_PUBLISHED_BYTES = Counter(
    "vmbackup_amqp_published_bytes_total",
    "Body bytes of the messages confirmed by the broker",
    ["kind"],
)
AMQP_PUBLISH_FAILURES = Counter(
    "vmbackup_amqp_publish_failures_total",
    "Publishes nacked, returned as unroutable or lost with the connection",
    ["reason"],
)
AMQP_PUBLISH_DROPPED = Counter(
    "vmbackup_amqp_publish_dropped_total",
    "Messages that can never be published (bad name or properties, too large): failed at"
    " once, never retried",
    ["reason"],
)
AMQP_CONSUMED = Counter(
    "vmbackup_amqp_consumed_total", "Messages handled and acked", ["queue", "kind"]
)
AMQP_CONSUMED_BYTES = Counter(
    "vmbackup_amqp_consumed_bytes_total",
    "Body bytes of the messages handled and acked",
    ["queue", "kind"],
)
AMQP_REJECTED = Counter(
    "vmbackup_amqp_rejected_total",
    "Messages rejected (requeued for retry or dead-lettered)",
    ["queue", "reason"],
)
AMQP_DEAD_LETTERED = Counter(
    "vmbackup_amqp_dead_lettered_total",
    "Messages sent to the dead-letter queue by this process",
    ["queue", "reason"],
)
AMQP_RECONNECTS = Counter(
    "vmbackup_amqp_reconnects_total", "Connections re-established after a loss", ["role"]
)
AMQP_HANDLER_SECONDS = Histogram(
    "vmbackup_amqp_handler_seconds",
    "Time spent handling one message",
    ["queue"],
    buckets=TASK_BUCKETS,
)
AMQP_CONFIRM_WAIT_SECONDS = Histogram(
    "vmbackup_amqp_confirm_wait_seconds",
    "Time a publisher waited for broker confirms",
    buckets=LATENCY_BUCKETS,
)


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass  # scrapes every 15 s are no log lines


def _app(
    metrics_app: Callable[..., Iterable[bytes]],
) -> Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/ready":  # common/health.py
            failing = health.not_ready()
            start_response(
                "503 Service Unavailable" if failing else "200 OK",
                [("Content-Type", "text/plain; charset=utf-8")],
            )
            return [("\n".join(failing) or "ready").encode() + b"\n"]
        return metrics_app(environ, start_response)

    return app


def exposed(role_families: Sequence[CollectorRegistry]) -> CollectorRegistry:
    """What a process's /metrics shows: the shared families (the default registry) and
    ``role_families``, the registries of the role it runs."""
    union = CollectorRegistry()
    for registry in (REGISTRY, *role_families):
        union.register(registry)
    return union


def serve_metrics(
    port: int, address: str = "127.0.0.1", role_families: Sequence[CollectorRegistry] = ()
) -> int:
    """Serve /metrics (see :func:`exposed`) and /ready on ``port`` (0 = do not serve);
    returns the port."""
    if port:
        app = _app(make_wsgi_app(exposed(role_families)))
        httpd = make_server(address, port, app, _ThreadingServer, handler_class=_QuietHandler)
        threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True).start()
    return port
