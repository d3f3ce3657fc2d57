"""A policy's second copy after each of its jobs (``[policies.copy] to = "/path"``, or
``to = "s3://BUCKET/PREFIX"`` with its ``s3_config``): the
policy's points that the target repository lacks are copied into it, through the library
(repository/copy.py, what `vmbackup repo copy --policy NAME` does), after the job's
retention, so that points retention just removed are not copied.

Why in the coordinator and not a writer: the copy reads the repository (which the
coordinator opens read only anyway) and writes only the target, which is not the
repository the writers serve; only the coordinator knows when a policy's window is over,
and the result goes into the job's report. A coordinator that does not mount the target
writable has no copy to run: schedule `vmbackup repo copy` instead (docs/operations.md,
"Second copy"; the production overlay's `vmbackup-copy` CronJob).

A failed copy changes nothing the target shows (a rerun continues where it stopped) and
does not change the job's status: the backup is what the exit status reports. It is in
the report (``copy.error``, ``copy.failed``) and logged at level error.
"""

from __future__ import annotations

from pathlib import Path

from common.logging import get_logger
from coordinator.job_runtime import Runtime
from coordinator.report import CopyReport
from coordinator.settings import PolicySettings
from repository.copy import copy_points
from repository.copy_selection import CopyFilter
from repository.errors import RepositoryError
from repository.repository import Repository

log = get_logger(__name__)
SHOWN = 20  # failed points named in the report


def copy_after_job(rt: Runtime, policy: PolicySettings) -> CopyReport | None:
    """Copy the policy's points the target lacks; None when the policy has no copy."""
    c = policy.copy
    if not c.enabled:
        return None
    out = CopyReport(to=c.to)
    src = rt.history.repo
    if not isinstance(src, Repository):  # a catalog that is no repository: nothing to read
        out.error = f"the repository ({type(src).__name__}) cannot be a copy's source"
        log.error("copy_failed", to=c.to, error=out.error)
        return out
    try:
        dst = Repository.open(
            c.to,
            c.passphrase.value if c.passphrase else None,
            s3_config=c.s3_config or None,
            cache_dir=Path(c.cache_dir) if c.cache_dir else None,
        )
    except RepositoryError as exc:
        out.error = f"target repository: {exc}"
        log.error("copy_failed", to=c.to, error=out.error)
        return out
    try:
        try:
            res = copy_points(src, dst, CopyFilter(policy=policy.name))
        finally:
            dst.close()  # uploads an S3 target's open packs: may fail as the copy did
    except RepositoryError as exc:  # the target failed (full, I/O), or chunk sizes differ
        out.error = str(exc)
        log.error("copy_failed", to=c.to, error=out.error)
        return out
    out.copied, out.present = len(res.copied), len(res.present)
    out.failed = [f"{f.id}: {f.reason}" for f in res.failed[:SHOWN]]
    out.chunks_sent, out.bytes_sent = res.stats.chunks_sent, res.stats.bytes_sent
    level = log.error if res.failed else log.info
    level(
        "copy_done",
        to=c.to,
        copied=out.copied,
        present=out.present,
        failed=len(res.failed),
        chunks_sent=out.chunks_sent,
        bytes_sent=out.bytes_sent,
    )
    return out
