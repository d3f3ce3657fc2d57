"""QueryChangedDiskAreas, done right: loop until the capacity and check every reply.

One reply may cover only part of the disk (ESXi caps the areas per reply), so the
loop asks again from ``reply.startOffset + reply.length`` until the capacity. A reply
that does not start where asked, makes no progress, runs past the capacity or holds
areas outside its own span is an error that fails the disk: never a backup.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyVmomi import vim, vmodl

Area = tuple[int, int]  # (offset, length)
ALL_AREAS = "*"  # changeId that asks for the allocated areas (a full)


class CbtError(Exception):
    """CBT could not answer; ``reason`` is short text for the job report."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CbtInconsistent(CbtError):
    """Replies that do not add up: the disk fails (a backup from them could be wrong)."""


class CbtNotAnswered(CbtError):
    """The server does not do CBT (e.g. unmodified vcsim): read the whole disk."""


class CbtInvalidBase(CbtError):
    """The changeId asked about is unknown or invalidated: do a full."""


_NOT_ANSWERED: tuple[type[BaseException], ...] = (
    vmodl.fault.MethodNotFound,
    vmodl.fault.NotSupported,
    vmodl.fault.NotImplemented,
)
_INVALID_BASE: tuple[type[BaseException], ...] = (vim.fault.FileFault, vmodl.fault.InvalidArgument)


def classify_fault(exc: BaseException) -> CbtError:
    msg = getattr(exc, "msg", "") or str(exc)
    name = type(exc).__name__.rsplit(".", 1)[-1]
    if isinstance(exc, _NOT_ANSWERED):
        return CbtNotAnswered(f"CBT not answered ({name}: {msg})")
    if isinstance(exc, _INVALID_BASE):
        return CbtInvalidBase(f"CBT query refused the changeId ({name}: {msg})")
    return CbtError(f"CBT query failed ({name}: {msg})")


def changed_areas(query: Callable[[int], Any], capacity: int) -> list[Area]:
    """Every area the replies of ``query(start_offset)`` name, checked, in reply order."""
    if capacity <= 0:
        raise CbtInconsistent(f"disk capacity {capacity} is not positive")
    areas: list[Area] = []
    offset = 0
    total = 0
    replies = 0
    while offset < capacity:
        reply = query(offset)
        replies += 1
        if reply is None:
            raise CbtInconsistent(f"reply {replies}: empty reply for offset {offset}")
        start = int(reply.startOffset)
        length = int(reply.length)
        if start != offset:
            raise CbtInconsistent(f"reply {replies}: starts at {start}, asked for {offset}")
        if length <= 0:
            raise CbtInconsistent(f"reply {replies}: length {length} makes no progress")
        end = start + length
        if end > capacity:
            raise CbtInconsistent(
                f"reply {replies}: covers up to {end}, past the capacity {capacity}"
            )
        for a in reply.changedArea or []:
            a_start, a_len = int(a.start), int(a.length)
            if a_len < 0 or a_start < start or a_start + a_len > end:
                raise CbtInconsistent(
                    f"reply {replies}: area ({a_start}, {a_len}) outside its span [{start}, {end})"
                )
            if a_len:
                areas.append((a_start, a_len))
        total += length
        offset = end
    if total != capacity:  # cannot happen given the checks above; kept as the stated rule
        raise CbtInconsistent(f"reply lengths add up to {total}, capacity is {capacity}")
    return areas


def vm_query(vm: Any, snapshot: Any, disk_key: int, change_id: str) -> Callable[[int], Any]:
    """``query(offset)`` for :func:`changed_areas` against a real VM and snapshot."""

    def q(offset: int) -> Any:
        try:
            return vm.QueryChangedDiskAreas(
                snapshot=snapshot, deviceKey=disk_key, startOffset=offset, changeId=change_id
            )
        except vmodl.MethodFault as exc:
            raise classify_fault(exc) from exc

    return q
