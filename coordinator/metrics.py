"""The coordinator's metric families, on its own registry: served by its processes only
(`vmbackup backup`, `vmbackup coordinator`; common/role_startup.py), beside the shared
ones of common/metrics.py."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()

COORD_VMS = Counter(
    "vmbackup_coordinator_vms_total",
    "VMs per job outcome: discovered (in a policy's scope), protected, skipped, failed",
    ["policy", "outcome"],
    registry=REGISTRY,
)
COORD_DISKS = Counter(
    "vmbackup_coordinator_disks_total",
    "Disks per job outcome: discovered, protected, skipped, failed",
    ["policy", "outcome"],
    registry=REGISTRY,
)
COORD_JOB_SECONDS = Histogram(
    "vmbackup_coordinator_job_duration_seconds",
    "Duration of one backup job (policy run)",
    ["policy"],
    buckets=(1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14400, 28800),
    registry=REGISTRY,
)
COORD_VM_FAILURES = Counter(
    "vmbackup_coordinator_vm_failures_total",
    "VMs that failed or were partial, by the cause the component that saw it named"
    " (common/causes.py: repository_full, disk_read, task_timeout, vcenter, ...)",
    ["policy", "cause"],
    registry=REGISTRY,
)
COORD_TASK_FAILURES = Counter(
    "vmbackup_coordinator_task_failures_total",
    "Tasks a proxy reported failed, by cause (common/causes.py)",
    ["cause"],
    registry=REGISTRY,
)
COORD_JOBS = Counter(
    "vmbackup_coordinator_jobs_total",
    "Jobs finished, by result",
    ["policy", "result"],
    registry=REGISTRY,
)
COORD_BYTES_PLANNED = Counter(
    "vmbackup_coordinator_planned_bytes_total",
    "Bytes planned for reading (kind=changed) against the disks' capacity (kind=capacity)",
    ["policy", "kind"],
    registry=REGISTRY,
)
COORD_CBT_FALLBACKS = Counter(
    "vmbackup_coordinator_cbt_fallbacks_total",
    "Disks backed up in full instead of incrementally (or whole instead of allocated)",
    ["reason"],
    registry=REGISTRY,
)
COORD_SNAPSHOTS_OPEN = Gauge(
    "vmbackup_coordinator_snapshots_open",
    "Backup snapshots this coordinator holds now",
    registry=REGISTRY,
)
COORD_SNAPSHOT_OLDEST_AGE = Gauge(
    "vmbackup_coordinator_snapshot_oldest_age_seconds",
    "Age of the oldest backup snapshot this coordinator holds (0 = none)",
    registry=REGISTRY,
)
COORD_SNAPSHOT_FAILURES = Counter(
    "vmbackup_coordinator_snapshot_failures_total",
    "Snapshot create or remove failures",
    ["vcenter", "op"],
    registry=REGISTRY,
)
COORD_ORPHANS_FOUND = Counter(
    "vmbackup_coordinator_orphan_snapshots_found_total",
    "Snapshots with our prefix that outlived their job",
    ["vcenter"],
    registry=REGISTRY,
)
COORD_ORPHANS_REMOVED = Counter(
    "vmbackup_coordinator_orphan_snapshots_removed_total",
    "Orphan snapshots removed",
    ["vcenter"],
    registry=REGISTRY,
)
COORD_ORPHAN_OLDEST_AGE = Gauge(
    "vmbackup_coordinator_orphan_snapshot_oldest_age_seconds",
    "Age, at the last sweep, of the oldest orphan snapshot whose removal failed (0 = none)",
    ["vcenter"],
    registry=REGISTRY,
)
COORD_CONSOLIDATIONS = Counter(
    "vmbackup_coordinator_consolidations_total",
    "ConsolidateVMDisks_Task runs for VMs with runtime.consolidationNeeded",
    ["vcenter", "result"],
    registry=REGISTRY,
)
COORD_TASKS_IN_FLIGHT = Gauge(
    "vmbackup_coordinator_tasks_in_flight",
    "Tasks published and not yet answered",
    ["host"],
    registry=REGISTRY,
)
COORD_LAST_SUCCESS = Gauge(
    "vmbackup_coordinator_last_success_timestamp_seconds",
    "Unix time of the last complete restore point of a VM",
    ["vcenter", "vm"],
    registry=REGISTRY,
)
COORD_VCENTER_CALLS = Counter(
    "vmbackup_coordinator_vcenter_calls_total",
    "SOAP round trips to vCenter",
    ["vcenter"],
    registry=REGISTRY,
)
COORD_VCENTER_RELOGINS = Counter(
    "vmbackup_coordinator_vcenter_relogins_total",
    "Logins again after NotAuthenticated (expired sessions)",
    ["vcenter"],
    registry=REGISTRY,
)

COORD_EVENTS = Counter(
    "vmbackup_coordinator_job_events_total",
    "Job events (vmbackup.events) by result: published, failed (broker), dropped (queue full)",
    ["result"],
    registry=REGISTRY,
)
COORD_JOB_MARKERS = Counter(
    "vmbackup_coordinator_job_markers_total",
    "Running-backup markers (gc protection) requested from the writers, by op and result",
    ["op", "result"],
    registry=REGISTRY,
)
COORD_RETENTION = Counter(
    "vmbackup_coordinator_retention_runs_total",
    "Policy retention runs after a job (applied by a writer), by result: ok, dry_run, error"
    " (the points stay as they were)",
    ["policy", "result"],
    registry=REGISTRY,
)
COORD_POINTS_PRUNED = Counter(
    "vmbackup_coordinator_points_pruned_total",
    "Restore points removed by the policy's retention",
    ["policy"],
    registry=REGISTRY,
)
COORD_TASKS_WITHDRAWN = Counter(
    "vmbackup_coordinator_tasks_withdrawn_total",
    "Published tasks no longer waited for (job cancelled, task timed out), announced to the "
    "proxies on vmbackup.withdrawals; result: published or failed (best effort)",
    ["reason", "result"],
    registry=REGISTRY,
)
COORD_NOTIFICATIONS = Counter(
    "vmbackup_coordinator_notifications_total",
    "Job notifications per webhook (coordinator.webhooks[].name) by result: sent, or failed"
    " after its retries (the job's status is not changed)",
    ["webhook", "result"],
    registry=REGISTRY,
)
COORD_JOB_RECORDS = Counter(
    "vmbackup_coordinator_job_records_total",
    "Finished jobs' reports handed to a writer for the job history (`vmbackup jobs`), by"
    " result: ok, error (logged; the job's status is not changed)",
    ["result"],
    registry=REGISTRY,
)
