"""One disk's work within a VM's backup: its plan, its report, its tasks' results, and
the failure that leaves it out of the point."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field

from common import causes
from common.messages import StagedTask, TaskResult
from coordinator import planner, report
from coordinator.discovery import DiskInfo


class DiskFailed(Exception):
    """This disk cannot be part of the point; the text is the reason, ``cause`` its word
    from common/causes.py."""

    def __init__(self, reason: str, cause: str = causes.INTERNAL) -> None:
        super().__init__(reason)
        self.cause = cause


@dataclass
class DiskWork:
    info: DiskInfo
    plan: planner.DiskPlan
    rep: report.DiskReport
    futures: dict[str, Future[TaskResult]] = field(default_factory=dict)
    results: list[TaskResult] = field(default_factory=list)
    # checked, for the commit: the tasks whose entries the proxies staged, and the entries
    # of proxies that sent them inline
    staged: list[StagedTask] = field(default_factory=list)
    entries: list[tuple[int, bytes]] = field(default_factory=list)
    error: str = ""
    cause: str = ""
