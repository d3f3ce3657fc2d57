"""The job history on the commits queue: the coordinator hands a finished job's report
to a writer to keep in the repository (it has no write access to it); the writer
answers with a CommitReply."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from common.job_ids import policy_of_job
from common.messages.base import Message, MessageError

# A report is a few hundred bytes per VM: this is tens of thousands of VMs, far below
# the message limit, and what a writer keeps of one job at most.
MAX_REPORT_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class JobRecord(Message):
    """Keep the report of finished job ``job_id`` (its JSON, coordinator/report.py) in the
    repository's job history (repository/job_history.py). Taken only from the accounts
    allowed to commit (docs/security.md, "Broker accounts"); a redelivery replaces it."""

    KIND: ClassVar[str] = "job-record"
    request_id: str
    reply_to: str
    job_id: str
    report: bytes  # UTF-8 JSON object whose "job_id" is job_id

    def __post_init__(self) -> None:
        if not policy_of_job(self.job_id):
            raise MessageError(f"job_id {self.job_id!r:.80} is not a job id of a policy")
        if len(self.report) > MAX_REPORT_BYTES:
            raise MessageError(f"report of {len(self.report)} bytes, more than {MAX_REPORT_BYTES}")
