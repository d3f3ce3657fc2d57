"""The writer's metric families, on its own registry: served by `vmbackup writer` only
(common/role_startup.py), beside the shared ones of common/metrics.py and the
repository's (repository/metrics.py)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from common.metrics import LATENCY_BUCKETS, TASK_BUCKETS

REGISTRY = CollectorRegistry()

# Ratios in PromQL: dedup = logical / new_raw, compression = new_raw / stored.
WRITER_CHUNKS = Counter(
    "vmbackup_writer_chunks_total",
    "Chunks received: new (stored now) or known (had it)",
    ["result"],
    registry=REGISTRY,
)
WRITER_LOGICAL_BYTES = Counter(
    "vmbackup_writer_logical_bytes_total",
    "Plaintext bytes of every chunk received",
    registry=REGISTRY,
)
WRITER_NEW_RAW_BYTES = Counter(
    "vmbackup_writer_new_raw_bytes_total", "Plaintext bytes of chunks stored new", registry=REGISTRY
)
WRITER_STORED_BYTES = Counter(
    "vmbackup_writer_stored_bytes_total", "Blob bytes written to the repository", registry=REGISTRY
)
WRITER_BATCHES = Counter(
    "vmbackup_writer_batches_total",
    "Chunk batches answered: ok or error",
    ["result"],
    registry=REGISTRY,
)
WRITER_HAVE_IDS = Counter(
    "vmbackup_writer_have_ids_total",
    "Ids asked in have-queries: present or absent",
    ["result"],
    registry=REGISTRY,
)
WRITER_COMMITS = Counter(
    "vmbackup_writer_commits_total",
    "Commits-queue messages by result: ok, error, part_ok, part_error, prune_ok,"
    " prune_error; sender_refused = not from a coordinator account (dead-lettered)",
    ["result"],
    registry=REGISTRY,
)
WRITER_WRITE_SECONDS = Histogram(
    "vmbackup_writer_write_seconds",
    "Time to verify and durably store one chunk batch",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
WRITER_FSYNC_SECONDS = Histogram(
    "vmbackup_writer_fsync_seconds",
    "Latency of one fsync (file or directory)",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
WRITER_QUEUE_LAG_SECONDS = Histogram(
    "vmbackup_writer_queue_lag_seconds",
    "Publish-to-handling delay of writer messages (1 s resolution)",
    ["kind"],
    buckets=TASK_BUCKETS,
    registry=REGISTRY,
)
WRITER_FREE_BYTES = Gauge(
    "vmbackup_writer_repository_free_bytes",
    "Bytes free on the file system of the writer's repository (as of its last check)",
    registry=REGISTRY,
)
WRITER_ACCEPTING = Gauge(
    "vmbackup_writer_accepting_chunks",
    "1 while the writer takes chunk batches, 0 while it refuses them (below"
    " writer.min_free_mib free)",
    registry=REGISTRY,
)
WRITER_STREAMS = Gauge(
    "vmbackup_writer_chunk_streams",
    "Connections open to this writer's chunk stream (authenticated or still in their hello)",
    registry=REGISTRY,
)
WRITER_STREAM_REFUSED = Counter(
    "vmbackup_writer_stream_connections_refused_total",
    "Chunk stream connections closed unserved: max_connections (writer.stream_max_connections"
    " open) or hello_deadline (no hello within writer.stream_hello_timeout)",
    ["reason"],
    registry=REGISTRY,
)
WRITER_STREAM_IDLE_CLOSED = Counter(
    "vmbackup_writer_chunk_streams_idle_closed_total",
    "Authenticated chunk streams closed after writer.stream_idle_timeout without a frame",
    registry=REGISTRY,
)
WRITER_STREAM_ERRORS = Counter(
    "vmbackup_writer_chunk_stream_errors_total",
    "Chunk streams dropped or refused, by kind (hello, token, MessageError, ...)",
    ["kind"],
    registry=REGISTRY,
)
