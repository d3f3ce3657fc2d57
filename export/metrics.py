"""The export process's metric families (nbdkit with our plugin, one per export).

Declared on the export's own registry, as each role's families are (common/metrics.py):
only this process has them, and it serves them beside the shared ones on its own
``/metrics`` (``vmbackup export --metrics-port``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

REGISTRY = CollectorRegistry()

EXPORT_OPEN = Gauge(
    "vmbackup_export_open", "Exports this process serves (1 while it serves)", registry=REGISTRY
)
EXPORT_CONNECTIONS = Gauge(
    "vmbackup_export_connections", "NBD client connections open on this export", registry=REGISTRY
)
EXPORT_READS = Counter("vmbackup_export_reads_total", "NBD read requests served", registry=REGISTRY)
EXPORT_READ_BYTES = Counter(
    "vmbackup_export_read_bytes_total",
    "Bytes served to NBD clients (zero chunks included)",
    registry=REGISTRY,
)
EXPORT_CACHE_HITS = Counter(
    "vmbackup_export_cache_hits_total",
    "Chunk lookups answered by the cache of decoded chunks (or by a decode in flight)",
    registry=REGISTRY,
)
EXPORT_CACHE_MISSES = Counter(
    "vmbackup_export_cache_misses_total",
    "Chunk lookups that read, decoded and checked a chunk from the repository",
    registry=REGISTRY,
)
EXPORT_READ_ERRORS = Counter(
    "vmbackup_export_read_errors_total",
    "Reads answered with EIO: a chunk missing or failing its check (logged)",
    registry=REGISTRY,
)


def count_chunk(hit: bool) -> None:
    """DiskReader's on_chunk: a cache hit or miss."""
    (EXPORT_CACHE_HITS if hit else EXPORT_CACHE_MISSES).inc()
