"""Retention on the commits queue: the coordinator asks a writer to apply a policy's keep
rules (it has no write access to the repository); the writer answers what it removed."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import ClassVar

from common.messages.base import Fields, Message, MessageError, added_fields

KEEP_FIELDS = (
    "keep_last",
    "keep_hourly",
    "keep_daily",
    "keep_weekly",
    "keep_monthly",
    "keep_yearly",
)
MAX_LISTED = 1000  # removed points named in a reply (the count is always whole)


@dataclass(frozen=True, slots=True)
class PruneRequest(Message):
    """Apply keep rules to the points whose job belongs to ``policy`` (the job id names
    it), never to other points or to those of running jobs (repository/retention.py).
    Taken only from the accounts allowed to commit (docs/security.md, "Broker accounts")."""

    KIND: ClassVar[str] = "prune"
    # Version 2: ``job_id``.
    VERSION: ClassVar[int] = 2
    UPGRADES: ClassVar[dict[int, typing.Callable[[Fields], Fields]]] = {
        1: lambda f: added_fields(f, "prune v1", job_id=""),
    }
    request_id: str
    reply_to: str
    policy: str
    keep_last: int
    keep_hourly: int
    keep_daily: int
    keep_weekly: int
    keep_monthly: int
    keep_yearly: int
    dry_run: bool  # decide and answer, remove nothing
    job_id: str = ""  # the job after which it runs (log lines); "" from a version-1 sender

    def __post_init__(self) -> None:
        if not self.policy:
            raise MessageError("policy is empty")
        counts = [getattr(self, k) for k in KEEP_FIELDS]
        if any(n < 0 for n in counts):
            raise MessageError(f"keep counts must not be negative: {counts}")
        if not any(counts):
            raise MessageError("no keep rule: a request to remove every point of a policy")


@dataclass(frozen=True, slots=True)
class PruneReply(Message):
    """A writer's answer to a PruneRequest: how many points stay, how many went (or would
    go, on a dry run) and the first MAX_LISTED of those as (point id, VM name, why)."""

    KIND: ClassVar[str] = "prune-reply"
    request_id: str
    ok: bool
    error: str
    kept: int
    removed_count: int
    removed: list[tuple[str, str, str]]
