"""A PruneRequest from the commits queue turned into the library's prune of one policy
(repository/prune.py, rules in repository/retention.py); the reply names what went.

The coordinator sends it after each of the policy's jobs; the writer, which has write
access to the repository, applies it. Senders are checked as for commits (senders.py:
coordinator accounts only), so a proxy cannot have points removed."""

from __future__ import annotations

from common.logging import get_logger
from common.messages import MAX_LISTED, PruneReply, PruneRequest
from repository.errors import RepositoryError
from repository.interfaces import Pruner
from repository.prune import prune
from repository.retention import KeepPolicy
from repository_writer import metrics

log = get_logger("writer")


def prune_reply(repo: Pruner, msg: PruneRequest) -> PruneReply:
    try:
        keep = KeepPolicy(
            last=msg.keep_last,
            hourly=msg.keep_hourly,
            daily=msg.keep_daily,
            weekly=msg.keep_weekly,
            monthly=msg.keep_monthly,
            yearly=msg.keep_yearly,
        )
        result = prune(repo, keep, policy=msg.policy, dry_run=msg.dry_run)
    except (RepositoryError, OSError) as exc:
        error = f"{type(exc).__name__}: {exc}"
        log.error("prune_failed", policy=msg.policy, error=error)
        metrics.WRITER_COMMITS.labels(result="prune_error").inc()
        return PruneReply(msg.request_id, False, error, 0, 0, [])
    for stale in result.stale_markers:
        log.warning("prune_ignores_stale_marker", policy=msg.policy, marker=stale)
    for stale in result.stale_holds:
        log.warning("prune_ignores_stale_hold", policy=msg.policy, hold=stale)
    event = "point_would_be_pruned" if msg.dry_run else "point_pruned"
    removed: list[tuple[str, str, str]] = []
    for d in result.remove:
        why = "; ".join(d.reasons)
        log.info(event, policy=msg.policy, point=d.point.id, vm=d.point.vm_name, why=why)
        if len(removed) < MAX_LISTED:
            removed.append((d.point.id, d.point.vm_name, why))
    log.info(
        "prune_done",
        policy=msg.policy,
        keep=keep.describe(),
        kept=len(result.keep),
        removed=len(result.remove),
        dry_run=msg.dry_run,
    )
    metrics.WRITER_COMMITS.labels(result="prune_ok").inc()
    return PruneReply(msg.request_id, True, "", len(result.keep), len(result.remove), removed)
