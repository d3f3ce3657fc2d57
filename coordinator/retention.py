"""A policy's retention after each of its jobs: the coordinator has no write access to the
repository, so it asks a writer (a PruneRequest on the commits queue, answered with a
PruneReply) to apply the policy's keep rules to the policy's points; the rules and what
they never remove: repository/retention.py.

Why a request from the coordinator rather than a writer-side CronJob: only the
coordinator knows when a policy's window is over and which rules belong to which policy
(the config); a CronJob would run on its own clock, needs one per policy, and could not
say in the job's report what was removed. The writer applies it under the same account
check as a commit (only coordinator accounts), and the running-backup markers keep the
points of every running job, of any coordinator, out of reach.

A failed retention leaves the points as they were (the next job tries again); it does not
change the job's status: the backup itself is what the exit status reports.
"""

from __future__ import annotations

import hashlib

from common.logging import get_logger
from common.messages import PruneReply, PruneRequest
from coordinator import metrics
from coordinator.job_runtime import Runtime, WriterRequestFailed
from coordinator.report import RetentionReport
from coordinator.settings import PolicySettings

log = get_logger(__name__)


def prune_request(key: str, reply_to: str, policy: PolicySettings, job_id: str) -> PruneRequest:
    r = policy.retention
    return PruneRequest(
        request_id=key,
        reply_to=reply_to,
        policy=policy.name,
        keep_last=r.last,
        keep_hourly=r.hourly,
        keep_daily=r.daily,
        keep_weekly=r.weekly,
        keep_monthly=r.monthly,
        keep_yearly=r.yearly,
        dry_run=r.dry_run,
        job_id=job_id,
    )


def apply_retention(rt: Runtime, policy: PolicySettings, job_id: str) -> RetentionReport | None:
    """Have a writer apply the policy's retention; None when the policy has none."""
    ret = policy.retention
    if not ret.enabled:
        return None
    out = RetentionReport(keep=ret.describe(), dry_run=ret.dry_run)
    key = "p-" + hashlib.sha256(job_id.encode()).hexdigest()[:32]
    try:
        reply = rt.writer_call(
            key,
            lambda reply_to: prune_request(key, reply_to, policy, job_id),
            rt.settings.commit_timeout_s,
            "retention",
            PruneReply,
        )
        if not reply.ok:
            raise WriterRequestFailed(f"refused by the writer: {reply.error}")
    except WriterRequestFailed as exc:
        out.error = str(exc)
        metrics.COORD_RETENTION.labels(policy.name, "error").inc()
        log.error("retention_failed", keep=out.keep, error=out.error)
        return out
    out.kept, out.removed_count = reply.kept, reply.removed_count
    out.removed = [{"point": p, "vm": vm, "why": why} for p, vm, why in reply.removed]
    metrics.COORD_RETENTION.labels(policy.name, "dry_run" if ret.dry_run else "ok").inc()
    if not ret.dry_run:
        metrics.COORD_POINTS_PRUNED.labels(policy.name).inc(reply.removed_count)
    log.info(
        "retention_applied",
        keep=out.keep,
        dry_run=ret.dry_run,
        kept=reply.kept,
        removed=reply.removed_count,
        points=[p for p, _, _ in reply.removed[:20]],
    )
    return out
