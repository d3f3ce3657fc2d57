"""A finished job's report kept in the repository's job history (`vmbackup jobs`): the
coordinator has no write access to the repository, so it hands the report to a writer
(a JobRecord on the commits queue, answered with a CommitReply), as it does a policy's
retention (retention.py); the bytes: repository/job_history.py.

A report that cannot be recorded (no writer answers, the repository refuses) is logged
and counted; the job's status stands: the backup itself is what the exit status reports.
"""

from __future__ import annotations

import hashlib
import json

from common.logging import get_logger
from common.messages import MAX_REPORT_BYTES, JobRecord
from coordinator import metrics
from coordinator.job_runtime import Runtime, WriterRequestFailed
from coordinator.report import JobReport

log = get_logger(__name__)


def record_job(rt: Runtime, rep: JobReport) -> bool:
    """Have a writer keep ``rep`` in the job history; whether one did."""
    body = json.dumps(rep.to_dict(), separators=(",", ":")).encode()
    if len(body) > MAX_REPORT_BYTES:
        log.error("job_record_too_large", bytes=len(body), limit=MAX_REPORT_BYTES)
        metrics.COORD_JOB_RECORDS.labels("error").inc()
        return False
    key = "j-" + hashlib.sha256(rep.job_id.encode()).hexdigest()[:32]
    try:
        reply = rt.writer_request(
            key,
            lambda reply_to: JobRecord(key, reply_to, rep.job_id, body),
            rt.settings.commit_timeout_s,
            "job record",
        )
        if not reply.ok:
            raise WriterRequestFailed(f"job record refused by the writer: {reply.error}")
    except WriterRequestFailed as exc:
        log.error("job_record_failed", error=str(exc))
        metrics.COORD_JOB_RECORDS.labels("error").inc()
        return False
    metrics.COORD_JOB_RECORDS.labels("ok").inc()
    return True
