"""The job history: the report of every finished backup job, one object each.

``jobs/<job id>`` is a metadata blob (``VMBM``: zstd, encrypted in an encrypted
repository; blob.py) of the job's report as JSON (coordinator/report.py's
``JobReport.to_dict``), written by a writer when the coordinator sends it (a JobRecord
on the commits queue) and read by `vmbackup jobs list|show`. Job ids are
``<policy>-<UTC start>-<hex>`` (common/job_ids.py): valid object names, and listed in
the order the jobs started by name alone, so that ``--last N`` reads N reports.

The report names VMs and hosts: it is sealed like a point's metadata. Its ``job_id``
must be the one its name says, so a report moved under another job's name is refused
when read. A job recorded again (a redelivery) replaces its report whole.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from common.job_ids import job_start, policy_of_job
from repository.errors import (
    CorruptObjectError,
    InvalidRequestError,
    JobNotFoundError,
    MissingObjectError,
)
from repository.storage import Bytes, Storage

PREFIX = "jobs"  # created on first use

Seal = Callable[[bytes], Sequence[Bytes]]
Unseal = Callable[[bytes, str], bytes]


def check_job_id(job_id: str) -> str:
    """``job_id`` when it is one of a policy's job ids (and so a valid object name)."""
    if not policy_of_job(job_id):
        raise InvalidRequestError(
            f"{job_id!r:.80} is not a job id (<policy>-<YYYYmmddTHHMMSSZ>-<6 hex>)"
        )
    return job_id


class JobHistory:
    def __init__(self, storage: Storage, seal: Seal, unseal: Unseal) -> None:
        self.storage = storage
        self._seal = seal
        self._unseal = unseal

    @staticmethod
    def _name(job_id: str) -> str:
        return f"{PREFIX}/{check_job_id(job_id)}"

    def record(self, job_id: str, report: bytes) -> None:
        """Keep ``report`` (a JSON object whose ``job_id`` is ``job_id``), durably."""
        name = self._name(job_id)
        why = self._parse(report, job_id)[1]
        if why:
            raise InvalidRequestError(f"the report to record: {why}")
        self.storage.write(name, self._seal(report))

    def job_ids(self, policy: str | None = None) -> list[str]:
        """The recorded jobs (of ``policy``), oldest start first."""
        ids = []
        for obj in self.storage.list(PREFIX):
            job_id = obj.name[len(PREFIX) + 1 :]
            if policy_of_job(job_id) and (policy is None or policy_of_job(job_id) == policy):
                ids.append(job_id)
        ids.sort(key=lambda j: (job_start(j), j))
        return ids

    def load(self, job_id: str) -> dict[str, Any]:
        """The report of ``job_id``; JobNotFoundError when none is recorded."""
        name = self._name(job_id)
        try:
            data = self.storage.read(name)
        except MissingObjectError:
            raise JobNotFoundError(f"no job {job_id!r} in the job history") from None
        where = self.storage.location(name)
        doc, why = self._parse(self._unseal(data, where), job_id)
        if why:
            raise CorruptObjectError(where, why)
        return doc

    @staticmethod
    def _parse(report: bytes, job_id: str) -> tuple[dict[str, Any], str]:
        """(the report, "") or ({}, what is wrong with it)."""
        try:
            doc = json.loads(report)
        except ValueError as exc:  # UnicodeDecodeError is one
            return {}, f"not JSON: {exc}"
        if not isinstance(doc, dict):
            return {}, f"a JSON {type(doc).__name__}, not an object"
        if doc.get("job_id") != job_id:
            return {}, f"the report of job {doc.get('job_id')!r:.80}, not of {job_id!r}"
        return doc, ""
