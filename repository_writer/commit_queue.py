"""The commits queue's messages, each turned into one call on the repository library's
``Committer`` view: TaskEntries (from a proxy) and CommitParts staged, CommitRequests
translated into a typed PointCommit and committed, JobMarkers begun or ended, JobRecords
kept in the job history. The reply says ok or why not."""

from __future__ import annotations

from common.logging import get_logger
from common.messages import (
    CommitPart,
    CommitReply,
    CommitRequest,
    JobMarker,
    JobRecord,
    TaskEntries,
)
from repository.errors import RepositoryError
from repository.interfaces import Committer
from repository_writer import metrics
from repository_writer.commit_limits import CommitLimits
from repository_writer.commit_translation import point_commit

log = get_logger("writer")


def commit_queue_reply(
    repo: Committer,
    msg: CommitRequest | CommitPart | JobMarker | JobRecord | TaskEntries,
    limits: CommitLimits | None = None,
) -> CommitReply:
    """Handle one message of the commits queue; the reply says ok or why not. A request
    beyond ``limits`` is refused before anything is allocated for it (and acked: a
    redelivery would be refused the same way)."""
    limits = limits or CommitLimits(repo.chunk_size)
    if isinstance(msg, TaskEntries):
        return _stage_task_entries(repo, msg, limits)
    if isinstance(msg, CommitPart):
        try:
            limits.check_part(msg)
            repo.stage_commit_part(msg.request_id, msg.disk_key, msg.part, msg.entries)
        except RepositoryError as exc:
            log.error("commit_part_refused", part=msg.part_id, error=str(exc))
            metrics.WRITER_COMMITS.labels(result="part_error").inc()
            return CommitReply(msg.part_id, False, str(exc), "")
        metrics.WRITER_COMMITS.labels(result="part_ok").inc()
        return CommitReply(msg.part_id, True, "", "")
    if isinstance(msg, JobMarker):
        try:
            if msg.op == "begin":
                repo.begin_job(msg.job_id)
            else:
                repo.end_job(msg.job_id)
        except (RepositoryError, OSError) as exc:
            log.error("job_marker_failed", job=msg.job_id, op=msg.op, error=str(exc))
            return CommitReply(msg.request_id, False, f"{type(exc).__name__}: {exc}", "")
        log.info("job_marker", job=msg.job_id, op=msg.op)
        return CommitReply(msg.request_id, True, "", "")
    if isinstance(msg, JobRecord):
        return _record_job(repo, msg)
    try:
        limits.check_request(msg)
        point_id = repo.commit_point(point_commit(msg))
    except RepositoryError as exc:
        log.error("commit_refused", job=msg.job_id, vm=msg.vm_name, error=str(exc))
        metrics.WRITER_COMMITS.labels(result="error").inc()
        return CommitReply(msg.request_id, False, str(exc), "")
    log.info(
        "point_committed",
        job=msg.job_id,
        vm=msg.vm_name,
        point=point_id,
        status=msg.status,
        disks=len(msg.disks),
    )
    metrics.WRITER_COMMITS.labels(result="ok").inc()
    return CommitReply(msg.request_id, True, "", point_id)


def _stage_task_entries(repo: Committer, msg: TaskEntries, limits: CommitLimits) -> CommitReply:
    try:
        limits.check_packed(msg.entries, f"entries of task {msg.task_id!r:.80}")
        n = repo.stage_task_entries(msg.job_id, msg.vm_uuid, msg.disk_key, msg.task_id, msg.entries)
    except RepositoryError as exc:
        log.error("task_entries_refused", job=msg.job_id, task=msg.task_id, error=str(exc))
        metrics.WRITER_COMMITS.labels(result="entries_error").inc()
        return CommitReply(msg.request_id, False, str(exc), "")
    log.debug("task_entries_staged", job=msg.job_id, task=msg.task_id, entries=n)
    metrics.WRITER_COMMITS.labels(result="entries_ok").inc()
    return CommitReply(msg.request_id, True, "", "")


def _record_job(repo: Committer, msg: JobRecord) -> CommitReply:
    try:
        repo.record_job(msg.job_id, msg.report)
    except (RepositoryError, OSError) as exc:
        log.error("job_record_failed", job=msg.job_id, error=str(exc))
        metrics.WRITER_COMMITS.labels(result="job_record_error").inc()
        return CommitReply(msg.request_id, False, f"{type(exc).__name__}: {exc}", "")
    log.info("job_recorded", job=msg.job_id, bytes=len(msg.report))
    metrics.WRITER_COMMITS.labels(result="job_record_ok").inc()
    return CommitReply(msg.request_id, True, "", "")
