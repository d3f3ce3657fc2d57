"""The proxy's metric families, on its own registry: served by `vmbackup proxy` only
(common/role_startup.py), beside the shared ones of common/metrics.py."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from common.metrics import TASK_BUCKETS

REGISTRY = CollectorRegistry()

PROXY_READ_BYTES = Counter(
    "vmbackup_proxy_read_bytes_total",
    "Bytes read from snapshot disks (rate = read B/s per transport and host)",
    ["transport", "host"],
    registry=REGISTRY,
)
PROXY_CHUNKS = Counter(
    "vmbackup_proxy_chunks_total",
    "Chunks handled: zero (never hashed or sent), known (writers had them), sent",
    ["result"],
    registry=REGISTRY,
)
PROXY_BYTES = Counter(
    "vmbackup_proxy_bytes_total",
    "Chunk bytes by outcome: zero, known and sent_raw (before compression), sent (payload)",
    ["kind"],
    registry=REGISTRY,
)
PROXY_TASKS = Counter(
    "vmbackup_proxy_tasks_total",
    "Tasks finished: ok, retry (returned), failed or withdrawn (dropped: the coordinator "
    "no longer waits for them)",
    ["outcome"],
    registry=REGISTRY,
)
PROXY_TASK_SECONDS = Histogram(
    "vmbackup_proxy_task_seconds",
    "Time to run one task",
    ["transport"],
    buckets=TASK_BUCKETS,
    registry=REGISTRY,
)
PROXY_QUEUE_WAIT_SECONDS = Histogram(
    "vmbackup_proxy_queue_wait_seconds",
    "Time a task waited in its queue (publish to start, 1 s resolution)",
    buckets=TASK_BUCKETS,
    registry=REGISTRY,
)
PROXY_THROTTLE_SECONDS = Counter(
    "vmbackup_proxy_throttle_seconds_total",
    "Time reads were held back by the per-host caps",
    ["host", "cap"],
    registry=REGISTRY,
)
PROXY_ERRORS = Counter(
    "vmbackup_proxy_errors_total", "Task failures by kind", ["kind"], registry=REGISTRY
)
PROXY_MEMORY_BYTES = Gauge(
    "vmbackup_proxy_memory_bytes",
    "Chunk bytes in flight (bounded by proxy.memory_limit_mib)",
    registry=REGISTRY,
)
PROXY_STREAMS = Gauge(
    "vmbackup_proxy_streams", "Open disk streams per host", ["host"], registry=REGISTRY
)
PROXY_BATCHES_SENT = Counter(
    "vmbackup_proxy_batches_sent_total",
    "Chunk batches sent to writers: over a writer's chunk stream (direct) or the broker",
    ["path"],
    registry=REGISTRY,
)
PROXY_ENTRIES_STAGED = Counter(
    "vmbackup_proxy_entries_staged_total",
    "Map entries of finished tasks staged at the writers (TaskEntries)",
    registry=REGISTRY,
)
PROXY_HAVE_QUERIES = Counter(
    "vmbackup_proxy_have_queries_total",
    "Have-queries sent to writers: over a writer's chunk stream (direct) or the broker",
    ["path"],
    registry=REGISTRY,
)
PROXY_CHUNK_STREAM_ERRORS = Counter(
    "vmbackup_proxy_chunk_stream_errors_total",
    "Writer chunk streams that failed (connect, send or lost); their batches went again",
    ["kind"],
    registry=REGISTRY,
)
