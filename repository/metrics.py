"""The repository library's metric families (gc, verify), on their own registry: served
by the process that serves the repository, `vmbackup writer` (common/role_startup.py)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

REGISTRY = CollectorRegistry()

REPO_GC_BYTES_FREED = Counter(
    "vmbackup_repo_gc_freed_bytes_total", "Bytes freed by gc", registry=REGISTRY
)
REPO_GC_CHUNKS_REMOVED = Counter(
    "vmbackup_repo_gc_removed_chunks_total", "Chunks removed by gc", registry=REGISTRY
)
REPO_VERIFY_PROBLEMS = Gauge(
    "vmbackup_repo_verify_problems", "Problems found by the last verify", registry=REGISTRY
)
REPO_VERIFY_CHUNKS = Counter(
    "vmbackup_repo_verify_chunks_total", "Chunks re-hashed by verify", registry=REGISTRY
)
REPO_VERIFY_QUARANTINED = Counter(
    "vmbackup_repo_verify_quarantined_chunks_total",
    "Damaged chunks verify moved to the repository's quarantine",
    registry=REGISTRY,
)
REPO_LOCK_SOONEST = Gauge(
    "vmbackup_repo_object_lock_soonest_retain_until_timestamp_seconds",
    "Object Lock: the soonest retain-until of an object kept points need, after the last"
    " retention extension (s3_lock_maintenance.py; a time stamp, so the lag shows as it grows)",
    registry=REGISTRY,
)
REPO_LOCK_PERIOD = Gauge(
    "vmbackup_repo_object_lock_period_seconds",
    "Object Lock: the repository's retention period",
    registry=REGISTRY,
)
REPO_LOCK_UNPROTECTED = Gauge(
    "vmbackup_repo_object_lock_unprotected_objects",
    "Object Lock: objects kept points need whose current version was deleted or overwritten",
    registry=REGISTRY,
)
REPO_S3_ERRORS = Counter(
    "vmbackup_repo_s3_errors_total",
    "S3 requests that failed after their retries (an absent key that may be absent is"
    " not one), by operation and reason: full, denied, no_bucket, timeout, connect, tls,"
    " other",
    ["operation", "reason"],
    registry=REGISTRY,
)
