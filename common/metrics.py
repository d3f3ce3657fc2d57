"""Every Prometheus metric of vmbackup, declared in one place.

Dashboards and alerts (k8s/) are checked against this module, so a metric is
declared here, never ad hoc in a role. Names: ``vmbackup_`` prefix, base units,
``_total`` for counters, ``_bytes`` / ``_seconds`` for units. Each process serves
``/metrics`` with :func:`serve_metrics`.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

# Buckets for latencies from sub-millisecond fsyncs to multi-minute tasks.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
TASK_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)

# --- process -------------------------------------------------------------------------
BUILD_INFO = Gauge("vmbackup_build_info", "Version of the running vmbackup", ["version", "role"])

# --- messaging (common/amqp.py) ------------------------------------------------------
AMQP_PUBLISHED = Counter(
    "vmbackup_amqp_published_total", "Messages confirmed by the broker", ["kind"]
)
AMQP_PUBLISH_FAILURES = Counter(
    "vmbackup_amqp_publish_failures_total",
    "Publishes nacked, returned as unroutable or lost with the connection",
    ["reason"],
)
AMQP_CONSUMED = Counter(
    "vmbackup_amqp_consumed_total", "Messages handled and acked", ["queue", "kind"]
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


def serve_metrics(port: int, address: str = "0.0.0.0") -> int:
    """Serve /metrics on ``port`` (0 = do not serve); returns the port."""
    if port:
        start_http_server(port, addr=address)
    return port
