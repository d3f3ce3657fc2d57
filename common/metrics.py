"""Every Prometheus metric of vmbackup, declared in one place.

Dashboards and alerts (k8s/) are checked against this module, so a metric is
declared here, never ad hoc in a role. Names: ``vmbackup_`` prefix, base units,
``_total`` for counters, ``_bytes`` / ``_seconds`` for units. Each process serves
``/metrics`` with :func:`serve_metrics`.
"""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import Counter, Gauge, Histogram, make_wsgi_app

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


def serve_metrics(port: int, address: str = "127.0.0.1") -> int:
    """Serve /metrics and /ready on ``port`` (0 = do not serve); returns the port."""
    if port:
        httpd = make_server(
            address, port, _app(make_wsgi_app()), _ThreadingServer, handler_class=_QuietHandler
        )
        threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True).start()
    return port


# --- coordinator (coordinator/) --------------------------------------------------------
COORD_VMS = Counter(
    "vmbackup_coordinator_vms_total",
    "VMs per job outcome: discovered (in a policy's scope), protected, skipped, failed",
    ["policy", "outcome"],
)
COORD_DISKS = Counter(
    "vmbackup_coordinator_disks_total",
    "Disks per job outcome: discovered, protected, skipped, failed",
    ["policy", "outcome"],
)
COORD_JOB_SECONDS = Histogram(
    "vmbackup_coordinator_job_duration_seconds",
    "Duration of one backup job (policy run)",
    ["policy"],
    buckets=(1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14400, 28800),
)
COORD_VM_FAILURES = Counter(
    "vmbackup_coordinator_vm_failures_total",
    "VMs that failed or were partial, by the cause the component that saw it named"
    " (common/causes.py: repository_full, disk_read, task_timeout, vcenter, ...)",
    ["policy", "cause"],
)
COORD_TASK_FAILURES = Counter(
    "vmbackup_coordinator_task_failures_total",
    "Tasks a proxy reported failed, by cause (common/causes.py)",
    ["cause"],
)
COORD_JOBS = Counter(
    "vmbackup_coordinator_jobs_total", "Jobs finished, by result", ["policy", "result"]
)
COORD_BYTES_PLANNED = Counter(
    "vmbackup_coordinator_planned_bytes_total",
    "Bytes planned for reading (kind=changed) against the disks' capacity (kind=capacity)",
    ["policy", "kind"],
)
COORD_CBT_FALLBACKS = Counter(
    "vmbackup_coordinator_cbt_fallbacks_total",
    "Disks backed up in full instead of incrementally (or whole instead of allocated)",
    ["reason"],
)
COORD_SNAPSHOTS_OPEN = Gauge(
    "vmbackup_coordinator_snapshots_open", "Backup snapshots this coordinator holds now"
)
COORD_SNAPSHOT_OLDEST_AGE = Gauge(
    "vmbackup_coordinator_snapshot_oldest_age_seconds",
    "Age of the oldest backup snapshot this coordinator holds (0 = none)",
)
COORD_SNAPSHOT_FAILURES = Counter(
    "vmbackup_coordinator_snapshot_failures_total",
    "Snapshot create or remove failures",
    ["vcenter", "op"],
)
COORD_ORPHANS_FOUND = Counter(
    "vmbackup_coordinator_orphan_snapshots_found_total",
    "Snapshots with our prefix that outlived their job",
    ["vcenter"],
)
COORD_ORPHANS_REMOVED = Counter(
    "vmbackup_coordinator_orphan_snapshots_removed_total",
    "Orphan snapshots removed",
    ["vcenter"],
)
COORD_ORPHAN_OLDEST_AGE = Gauge(
    "vmbackup_coordinator_orphan_snapshot_oldest_age_seconds",
    "Age, at the last sweep, of the oldest orphan snapshot whose removal failed (0 = none)",
    ["vcenter"],
)
COORD_CONSOLIDATIONS = Counter(
    "vmbackup_coordinator_consolidations_total",
    "ConsolidateVMDisks_Task runs for VMs with runtime.consolidationNeeded",
    ["vcenter", "result"],
)
COORD_TASKS_IN_FLIGHT = Gauge(
    "vmbackup_coordinator_tasks_in_flight", "Tasks published and not yet answered", ["host"]
)
COORD_LAST_SUCCESS = Gauge(
    "vmbackup_coordinator_last_success_timestamp_seconds",
    "Unix time of the last complete restore point of a VM",
    ["vcenter", "vm"],
)
COORD_VCENTER_CALLS = Counter(
    "vmbackup_coordinator_vcenter_calls_total", "SOAP round trips to vCenter", ["vcenter"]
)
COORD_VCENTER_RELOGINS = Counter(
    "vmbackup_coordinator_vcenter_relogins_total",
    "Logins again after NotAuthenticated (expired sessions)",
    ["vcenter"],
)

# coordinator follow-ups (coord2): job events, start-up state
COORD_EVENTS = Counter(
    "vmbackup_coordinator_job_events_total",
    "Job events (vmbackup.events) by result: published, failed (broker), dropped (queue full)",
    ["result"],
)
COORD_JOB_MARKERS = Counter(
    "vmbackup_coordinator_job_markers_total",
    "Running-backup markers (gc protection) requested from the writers, by op and result",
    ["op", "result"],
)
COORD_RETENTION = Counter(
    "vmbackup_coordinator_retention_runs_total",
    "Policy retention runs after a job (applied by a writer), by result: ok, dry_run, error"
    " (the points stay as they were)",
    ["policy", "result"],
)
COORD_POINTS_PRUNED = Counter(
    "vmbackup_coordinator_points_pruned_total",
    "Restore points removed by the policy's retention",
    ["policy"],
)
COORD_TASKS_WITHDRAWN = Counter(
    "vmbackup_coordinator_tasks_withdrawn_total",
    "Published tasks no longer waited for (job cancelled, task timed out), announced to the "
    "proxies on vmbackup.withdrawals; result: published or failed (best effort)",
    ["reason", "result"],
)


# --- proxy (proxy_worker/) ---------------------------------------------------------------
PROXY_READ_BYTES = Counter(
    "vmbackup_proxy_read_bytes_total",
    "Bytes read from snapshot disks (rate = read B/s per transport and host)",
    ["transport", "host"],
)
PROXY_CHUNKS = Counter(
    "vmbackup_proxy_chunks_total",
    "Chunks handled: zero (never hashed or sent), known (writers had them), sent",
    ["result"],
)
PROXY_BYTES = Counter(
    "vmbackup_proxy_bytes_total",
    "Chunk bytes by outcome: zero, known and sent_raw (before compression), sent (payload)",
    ["kind"],
)
PROXY_TASKS = Counter(
    "vmbackup_proxy_tasks_total",
    "Tasks finished: ok, retry (returned), failed or withdrawn (dropped: the coordinator "
    "no longer waits for them)",
    ["outcome"],
)
PROXY_TASK_SECONDS = Histogram(
    "vmbackup_proxy_task_seconds", "Time to run one task", ["transport"], buckets=TASK_BUCKETS
)
PROXY_QUEUE_WAIT_SECONDS = Histogram(
    "vmbackup_proxy_queue_wait_seconds",
    "Time a task waited in its queue (publish to start, 1 s resolution)",
    buckets=TASK_BUCKETS,
)
PROXY_THROTTLE_SECONDS = Counter(
    "vmbackup_proxy_throttle_seconds_total",
    "Time reads were held back by the per-host caps",
    ["host", "cap"],
)
PROXY_ERRORS = Counter("vmbackup_proxy_errors_total", "Task failures by kind", ["kind"])
PROXY_MEMORY_BYTES = Gauge(
    "vmbackup_proxy_memory_bytes", "Chunk bytes in flight (bounded by proxy.memory_limit_mib)"
)
PROXY_STREAMS = Gauge("vmbackup_proxy_streams", "Open disk streams per host", ["host"])
PROXY_BATCHES_SENT = Counter(
    "vmbackup_proxy_batches_sent_total",
    "Chunk batches sent to writers: over a writer's chunk stream (direct) or the broker",
    ["path"],
)
PROXY_ENTRIES_STAGED = Counter(
    "vmbackup_proxy_entries_staged_total",
    "Map entries of finished tasks staged at the writers (TaskEntries)",
)
PROXY_HAVE_QUERIES = Counter(
    "vmbackup_proxy_have_queries_total",
    "Have-queries sent to writers: over a writer's chunk stream (direct) or the broker",
    ["path"],
)
PROXY_CHUNK_STREAM_ERRORS = Counter(
    "vmbackup_proxy_chunk_stream_errors_total",
    "Writer chunk streams that failed (connect, send or lost); their batches went again",
    ["kind"],
)


# --- repository and writer (repository_writer/) ----------------------------------------
# Ratios in PromQL: dedup = logical / new_raw, compression = new_raw / stored.
WRITER_CHUNKS = Counter(
    "vmbackup_writer_chunks_total",
    "Chunks received: new (stored now) or known (had it)",
    ["result"],
)
WRITER_LOGICAL_BYTES = Counter(
    "vmbackup_writer_logical_bytes_total", "Plaintext bytes of every chunk received"
)
WRITER_NEW_RAW_BYTES = Counter(
    "vmbackup_writer_new_raw_bytes_total", "Plaintext bytes of chunks stored new"
)
WRITER_STORED_BYTES = Counter(
    "vmbackup_writer_stored_bytes_total", "Blob bytes written to the repository"
)
WRITER_BATCHES = Counter(
    "vmbackup_writer_batches_total", "Chunk batches answered: ok or error", ["result"]
)
WRITER_HAVE_IDS = Counter(
    "vmbackup_writer_have_ids_total", "Ids asked in have-queries: present or absent", ["result"]
)
WRITER_COMMITS = Counter(
    "vmbackup_writer_commits_total",
    "Commits-queue messages by result: ok, error, part_ok, part_error, prune_ok,"
    " prune_error; sender_refused = not from a coordinator account (dead-lettered)",
    ["result"],
)
WRITER_WRITE_SECONDS = Histogram(
    "vmbackup_writer_write_seconds",
    "Time to verify and durably store one chunk batch",
    buckets=LATENCY_BUCKETS,
)
WRITER_FSYNC_SECONDS = Histogram(
    "vmbackup_writer_fsync_seconds",
    "Latency of one fsync (file or directory)",
    buckets=LATENCY_BUCKETS,
)
WRITER_QUEUE_LAG_SECONDS = Histogram(
    "vmbackup_writer_queue_lag_seconds",
    "Publish-to-handling delay of writer messages (1 s resolution)",
    ["kind"],
    buckets=TASK_BUCKETS,
)
WRITER_FREE_BYTES = Gauge(
    "vmbackup_writer_repository_free_bytes",
    "Bytes free on the file system of the writer's repository (as of its last check)",
)
WRITER_ACCEPTING = Gauge(
    "vmbackup_writer_accepting_chunks",
    "1 while the writer takes chunk batches, 0 while it refuses them (below"
    " writer.min_free_mib free)",
)
WRITER_STREAMS = Gauge(
    "vmbackup_writer_chunk_streams",
    "Connections open to this writer's chunk stream (authenticated or still in their hello)",
)
WRITER_STREAM_REFUSED = Counter(
    "vmbackup_writer_stream_connections_refused_total",
    "Chunk stream connections closed unserved: max_connections (writer.stream_max_connections"
    " open) or hello_deadline (no hello within writer.stream_hello_timeout)",
    ["reason"],
)
WRITER_STREAM_IDLE_CLOSED = Counter(
    "vmbackup_writer_chunk_streams_idle_closed_total",
    "Authenticated chunk streams closed after writer.stream_idle_timeout without a frame",
)
WRITER_STREAM_ERRORS = Counter(
    "vmbackup_writer_chunk_stream_errors_total",
    "Chunk streams dropped or refused, by kind (hello, token, MessageError, ...)",
    ["kind"],
)
REPO_GC_BYTES_FREED = Counter("vmbackup_repo_gc_freed_bytes_total", "Bytes freed by gc")
REPO_GC_CHUNKS_REMOVED = Counter("vmbackup_repo_gc_removed_chunks_total", "Chunks removed by gc")
REPO_VERIFY_PROBLEMS = Gauge("vmbackup_repo_verify_problems", "Problems found by the last verify")
REPO_VERIFY_CHUNKS = Counter("vmbackup_repo_verify_chunks_total", "Chunks re-hashed by verify")
REPO_VERIFY_QUARANTINED = Counter(
    "vmbackup_repo_verify_quarantined_chunks_total",
    "Damaged chunks verify moved to the repository's quarantine",
)


# --- coordinator: job notifications and history (coordinator/notify/, job_record.py) ---
COORD_NOTIFICATIONS = Counter(
    "vmbackup_coordinator_notifications_total",
    "Job notifications per webhook (coordinator.webhooks[].name) by result: sent, or failed"
    " after its retries (the job's status is not changed)",
    ["webhook", "result"],
)
COORD_JOB_RECORDS = Counter(
    "vmbackup_coordinator_job_records_total",
    "Finished jobs' reports handed to a writer for the job history (`vmbackup jobs`), by"
    " result: ok, error (logged; the job's status is not changed)",
    ["result"],
)
