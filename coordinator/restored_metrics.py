"""Metrics state a restarted coordinator must not lose.

``vmbackup_coordinator_last_success_timestamp_seconds`` comes from the repository's
complete points (the coordinator keeps no database), so the "not backed up in 26 h"
alert keeps working across restarts; the job, VM and disk counters get every label
set at zero so that ``increase()`` sees their first failure.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from common.logging import get_logger
from coordinator import metrics, report

log = get_logger(__name__)

# The alert looks back 7 days (last_over_time[7d]): older points would only bring back
# series of VMs that are gone.
HORIZON_S = 7 * 86400.0
JOB_RESULTS = (report.OK, report.PARTIAL, report.FAILED)
VM_OUTCOMES = ("discovered", "protected", "skipped", "failed")


def zero_label_sets(policies: Iterable[str]) -> None:
    for p in policies:
        for r in JOB_RESULTS:
            metrics.COORD_JOBS.labels(p, r)
        for o in VM_OUTCOMES:
            metrics.COORD_VMS.labels(p, o)
            metrics.COORD_DISKS.labels(p, o)
        for k in ("changed", "capacity"):
            metrics.COORD_BYTES_PLANNED.labels(p, k)
        metrics.COORD_JOB_SECONDS.labels(p)


def last_success_from_repository(repo: Any, now: float | None = None) -> int:
    """Set the last-success gauge per (vCenter, VM name) from the newest complete point
    of each VM; return how many series were set. An unreadable point is skipped
    (logged): it must not keep the coordinator from starting."""
    now = time.time() if now is None else now
    newest: dict[tuple[str, str], float] = {}
    ps = repo.point_store
    for ref in ps.point_refs():
        try:
            p = ps.load(ref)
        except Exception as exc:
            log.warning("point_unreadable_at_startup", point=ref.prefix, error=str(exc))
            continue
        if p.status != "complete" or p.snapshot_time < now - HORIZON_S:
            continue
        key = (p.vcenter, p.vm_name)
        newest[key] = max(newest.get(key, 0.0), float(p.snapshot_time))
    for (vc, vm), ts in newest.items():
        metrics.COORD_LAST_SUCCESS.labels(vc, vm).set(ts)
    log.info("last_success_restored", vms=len(newest))
    return len(newest)


def restore_metrics(repo: Any, policies: Iterable[str]) -> None:
    zero_label_sets(policies)
    try:
        last_success_from_repository(repo)
    except Exception as exc:  # a repository problem shows up in the jobs, loudly
        log.error("last_success_restore_failed", error=str(exc))
