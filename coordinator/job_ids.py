"""Job ids: ``<policy>-<UTC time>-<hex>``. The policy a job ran is read back from its id
(the daemon's resume, the catalog's "what did this policy back up last time"): the
coordinator keeps no database, and every point and snapshot carries its job id."""

from __future__ import annotations

import datetime as dt
import secrets


def new_job_id(policy: str, now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.UTC)
    return f"{policy}-{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def policy_of_job(job_id: str) -> str:
    """The policy name a job id starts with ("" when it is not one of ours)."""
    parts = job_id.rsplit("-", 2)
    return parts[0] if len(parts) == 3 else ""
