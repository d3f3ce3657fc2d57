"""Job ids: ``<policy>-<UTC time>-<hex>``. The policy a job ran is read back from its id
(the daemon's resume, the catalog's "what did this policy back up last time", a policy's
retention on the writers): the coordinator keeps no database, and every point and
snapshot carries its job id. Here, not in the coordinator: the writer applies a policy's
retention to the points whose job id names it."""

from __future__ import annotations

import datetime as dt
import re
import secrets

# A policy name (coordinator/settings.py), the job's start in UTC, 6 hex digits.
_JOB_ID = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.-]{0,62})-(\d{8}T\d{6}Z)-[0-9a-f]{6}")


def new_job_id(policy: str, now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.UTC)
    return f"{policy}-{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def policy_of_job(job_id: str) -> str:
    """The policy name a job id starts with ("" when it is not one of ours: an
    ``import-...`` job of `repo import-disk`, or any id not made by new_job_id)."""
    m = _JOB_ID.fullmatch(job_id)
    return m.group(1) if m else ""


def job_start(job_id: str) -> str:
    """The UTC start a job id carries, ``YYYYmmddTHHMMSSZ`` (sorts as time; "" when it is
    not one of ours): the job history lists jobs in the order they started by name alone."""
    m = _JOB_ID.fullmatch(job_id)
    return m.group(2) if m else ""
