"""The Grafana dashboard's panels and template variables: data that generate.py turns into
dashboard.json (``.venv/bin/python -m k8s.monitoring.generate``).

Size: past 400 lines because this is the panel list itself, one entry per panel; the only
code is ``sel``.
"""

from __future__ import annotations

# The dashboard's template variables (name, label, query), in the order Grafana shows them.
# Each query lists the values of a label the series really carry: cluster (an external
# label of multi-cluster set-ups; none in a single cluster, where "All" matches every
# series) and namespace (the scrape target's) on every series, vcenter and policy on those
# whose metric declares them in common/metrics.py. tests/k8s/test_dashboard.py checks it.
SCOPE = 'cluster=~"$cluster", namespace=~"$namespace"'
VARIABLES = [
    ("cluster", "Cluster", "label_values(vmbackup_build_info, cluster)"),
    ("namespace", "Namespace", 'label_values(vmbackup_build_info{cluster=~"$cluster"}, namespace)'),
    (
        "vcenter",
        "vCenter",
        f"label_values(vmbackup_coordinator_last_success_timestamp_seconds{{{SCOPE}}}, vcenter)",
    ),
    ("policy", "Policy", f"label_values(vmbackup_coordinator_jobs_total{{{SCOPE}}}, policy)"),
]
VCENTER = 'vcenter=~"$vcenter"'
POLICY = 'policy=~"$policy"'


def sel(metric: str, *matchers: str) -> str:
    """A series selector scoped by the cluster and namespace variables (and more matchers)."""
    return f"{metric}{{{', '.join((SCOPE, *matchers))}}}"


# Shared PromQL fragments.
LAST_SUCCESS = (
    "max by (vcenter, vm) (last_over_time("
    f"{sel('vmbackup_coordinator_last_success_timestamp_seconds', VCENTER)}[7d]))"
)
TASK_QUEUES = 'vhost="vmbackup", queue=~"vmbackup\\\\.tasks\\\\..+"'
SHARD_QUEUES = 'vhost="vmbackup", queue=~"vmbackup\\\\.shard\\\\..+"'
REPO_PVC = 'persistentvolumeclaim="vmbackup-repository"'
DLQ = 'vhost="vmbackup", queue="vmbackup.dlq"'
PROTECTED = 'outcome="protected"'
FAILED = 'outcome="failed"'
ROLE_JOBS = 'job=~"vmbackup-.+"'
VERIFY_JOBS = 'job_name=~"vmbackup-verify-.+"'

# (title, panel type, unit, [(expr, legend)], width, description); rows start with a str.
Panel = tuple[str, str, str, list[tuple[str, str]], int, str]
LAYOUT: list[str | Panel] = [
    "Protection",
    (
        "VMs protected (24 h)",
        "stat",
        "short",
        [
            (
                f"sum(increase({sel('vmbackup_coordinator_vms_total', POLICY, PROTECTED)}[24h]))",
                "",
            )
        ],
        4,
        "VMs with a new restore point in the last 24 h",
    ),
    (
        "VMs failed (24 h)",
        "stat",
        "short",
        [
            (
                f"sum(increase({sel('vmbackup_coordinator_vms_total', POLICY, FAILED)}[24h]))",
                "",
            )
        ],
        4,
        "VMs whose backup failed in the last 24 h (job reports list them)",
    ),
    (
        "VMs not backed up in 26 h",
        "stat",
        "short",
        [(f"count(time() - {LAST_SUCCESS} > 26 * 3600) or vector(0)", "")],
        4,
        "VMs that alert VmbackupVMNotBackedUp covers",
    ),
    (
        "Oldest last backup",
        "stat",
        "s",
        [(f"time() - min({LAST_SUCCESS})", "")],
        4,
        "Age of the least recently backed-up VM",
    ),
    (
        "Snapshots open / oldest age",
        "stat",
        "short",
        [
            (f"sum({sel('vmbackup_coordinator_snapshots_open')})", "open"),
            (
                f"max({sel('vmbackup_coordinator_snapshot_oldest_age_seconds')}) / 3600",
                "oldest (h)",
            ),
        ],
        4,
        "Backup snapshots held now on production VMs",
    ),
    (
        "Dead-lettered messages",
        "stat",
        "short",
        [
            (
                f"max({sel('rabbitmq_detailed_queue_messages', DLQ)}) or vector(0)",
                "",
            )
        ],
        4,
        "Messages in vmbackup.dlq (alert VmbackupDLQNotEmpty)",
    ),
    (
        "Jobs by result",
        "timeseries",
        "short",
        [
            (
                "sum by (policy, result) "
                f"(increase({sel('vmbackup_coordinator_jobs_total', POLICY)}[1h]))",
                "",
            )
        ],
        12,
        "Finished backup jobs per hour: ok, partial, failed",
    ),
    (
        "Job duration (median over 1 d)",
        "timeseries",
        "s",
        [
            (
                "histogram_quantile(0.5, sum by (le, policy) "
                f"(rate({sel('vmbackup_coordinator_job_duration_seconds_bucket', POLICY)}[1d])))",
                "{{policy}}",
            )
        ],
        12,
        "Does the nightly job still fit its window?",
    ),
    "Throughput and data reduction",
    (
        "Read from snapshot disks",
        "timeseries",
        "Bps",
        [(f"sum by (host) (rate({sel('vmbackup_proxy_read_bytes_total')}[5m]))", "{{host}}")],
        12,
        "Bytes per second read per ESXi host",
    ),
    (
        "Chunk bytes by outcome",
        "timeseries",
        "Bps",
        [(f"sum by (kind) (rate({sel('vmbackup_proxy_bytes_total')}[5m]))", "{{kind}}")],
        12,
        "zero (never sent), known (deduplicated at the source), sent_raw and sent (payload)",
    ),
    (
        "Chunk batches: chunk streams vs broker",
        "timeseries",
        "ops",
        [
            (
                f"sum by (path) (rate({sel('vmbackup_proxy_batches_sent_total')}[5m]))",
                "batches {{path}}",
            ),
            (
                f"sum by (path) (rate({sel('vmbackup_proxy_have_queries_total')}[5m]))",
                "have {{path}}",
            ),
            (
                f"sum by (kind) (rate({sel('vmbackup_proxy_chunk_stream_errors_total')}[5m]))",
                "errors {{kind}}",
            ),
        ],
        12,
        "direct = on a writer's chunk stream; broker = through RabbitMQ (the fallback)",
    ),
    (
        "Dedup and compression ratios (1 h)",
        "timeseries",
        "none",
        [
            (
                f"sum(rate({sel('vmbackup_writer_logical_bytes_total')}[1h])) "
                f"/ sum(rate({sel('vmbackup_writer_new_raw_bytes_total')}[1h]))",
                "dedup",
            ),
            (
                f"sum(rate({sel('vmbackup_writer_new_raw_bytes_total')}[1h])) "
                f"/ sum(rate({sel('vmbackup_writer_stored_bytes_total')}[1h]))",
                "compression",
            ),
        ],
        12,
        "logical / new and new / stored bytes at the writers",
    ),
    (
        "Read vs changed vs capacity (1 h)",
        "timeseries",
        "bytes",
        [
            (
                "sum by (kind) "
                f"(increase({sel('vmbackup_coordinator_planned_bytes_total', POLICY)}[1h]))",
                "planned {{kind}}",
            ),
            (f"sum(increase({sel('vmbackup_proxy_read_bytes_total')}[1h]))", "read by proxies"),
        ],
        12,
        "Bytes CBT says changed and bytes the proxies read, against the disks' capacity:"
        " the incremental saving (read above changed = chunk rounding and retries)",
    ),
    "Queues and scaling",
    (
        "Task queue depth",
        "timeseries",
        "short",
        [
            (
                f"max by (queue) ({sel('rabbitmq_detailed_queue_messages', TASK_QUEUES)})",
                "{{queue}}",
            )
        ],
        12,
        "Ready + unacked tasks per host queue: the proxies' autoscaling input",
    ),
    (
        "Shard queue depth",
        "timeseries",
        "short",
        [
            (
                f"max by (queue) ({sel('rabbitmq_detailed_queue_messages', SHARD_QUEUES)})",
                "{{queue}}",
            )
        ],
        12,
        "Chunk batches waiting per writer shard",
    ),
    (
        "Processes up",
        "timeseries",
        "short",
        [(f"count by (job) ({sel('up', ROLE_JOBS)} == 1)", "{{job}}")],
        12,
        "Scraped and up, per role (proxies follow the queue depth)",
    ),
    (
        "Tasks in flight per host",
        "timeseries",
        "short",
        [(f"sum by (host) ({sel('vmbackup_coordinator_tasks_in_flight')})", "{{host}}")],
        12,
        "Bounded by coordinator.limits.tasks_per_host",
    ),
    "Latency",
    (
        "Proxy task duration p95",
        "timeseries",
        "s",
        [
            (
                "histogram_quantile(0.95, sum by (le, transport) "
                f"(rate({sel('vmbackup_proxy_task_seconds_bucket')}[15m])))",
                "{{transport}}",
            )
        ],
        8,
        "Time to read, hash, compress and send one task",
    ),
    (
        "Task queue wait p95",
        "timeseries",
        "s",
        [
            (
                "histogram_quantile(0.95, sum by (le) "
                f"(rate({sel('vmbackup_proxy_queue_wait_seconds_bucket')}[15m])))",
                "wait",
            )
        ],
        8,
        "Publish to start of a task: too long = too few proxies",
    ),
    (
        "Writer fsync / batch write p99",
        "timeseries",
        "s",
        [
            (
                "histogram_quantile(0.99, sum by (le) "
                f"(rate({sel('vmbackup_writer_fsync_seconds_bucket')}[5m])))",
                "fsync",
            ),
            (
                "histogram_quantile(0.99, sum by (le) "
                f"(rate({sel('vmbackup_writer_write_seconds_bucket')}[5m])))",
                "batch write",
            ),
        ],
        8,
        "The repository volume's latency",
    ),
    "Health",
    (
        "Proxy chunk memory in flight",
        "timeseries",
        "bytes",
        [(f"max by (pod) ({sel('vmbackup_proxy_memory_bytes')})", "{{pod}}")],
        8,
        "Bounded by proxy.memory_limit_mib (96 MiB by default)",
    ),
    (
        "CBT fallbacks",
        "timeseries",
        "short",
        [
            (
                "sum by (reason) "
                f"(increase({sel('vmbackup_coordinator_cbt_fallbacks_total')}[1h]))",
                "{{reason}}",
            )
        ],
        8,
        "Disks read in full instead of incrementally, per reason",
    ),
    (
        "Errors",
        "timeseries",
        "short",
        [
            (
                f"sum by (kind) (increase({sel('vmbackup_proxy_errors_total')}[1h]))",
                "proxy {{kind}}",
            ),
            (
                f"sum by (reason) (increase({sel('vmbackup_amqp_rejected_total')}[1h]))",
                "rejected {{reason}}",
            ),
            (
                "sum by (op) (increase("
                f"{sel('vmbackup_coordinator_snapshot_failures_total', VCENTER)}[1h]))",
                "snapshot {{op}}",
            ),
        ],
        8,
        "Per hour",
    ),
    (
        "Repository volume free",
        "timeseries",
        "percentunit",
        [
            (
                f"{sel('kubelet_volume_stats_available_bytes', REPO_PVC)} "
                f"/ {sel('kubelet_volume_stats_capacity_bytes', REPO_PVC)}",
                "free",
            )
        ],
        8,
        "Alert VmbackupRepositoryFull below 10 %",
    ),
    (
        "Orphan snapshots found / removed",
        "timeseries",
        "short",
        [
            (
                "sum(increase("
                f"{sel('vmbackup_coordinator_orphan_snapshots_found_total', VCENTER)}[6h]))",
                "found",
            ),
            (
                "sum(increase("
                f"{sel('vmbackup_coordinator_orphan_snapshots_removed_total', VCENTER)}[6h]))",
                "removed",
            ),
        ],
        8,
        "Leftovers of interrupted runs and the sweep that removes them",
    ),
    (
        "Verify problems",
        "stat",
        "short",
        [
            (
                f"max({sel('kube_job_status_failed', VERIFY_JOBS)}) or vector(0)",
                "failed verify jobs",
            )
        ],
        8,
        "A failed vmbackup-verify Job means damage was found",
    ),
]
