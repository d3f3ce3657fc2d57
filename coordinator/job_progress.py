"""A backup job's progress for a person watching: VMs done of those selected, data read
of that planned, a line per VM finished.

Fed with the job's events (coordinator/events.py: the same names and fields): by the
job itself in the process that runs it (`vmbackup backup`), or by whoever consumes
them from the events exchange (the demo). It calls ``common.progress.Progress``
callables and knows nothing of how they are shown.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from common.progress import Progress
from coordinator.report import size_text


def _ignore(_line: str) -> None:
    pass


class JobProgress:
    def __init__(
        self, vms: Progress, data: Progress, note: Callable[[str], None] = _ignore
    ) -> None:
        self._vms, self._data, self._note = vms, data, note
        self._lock = threading.Lock()
        self.vms_total = self.vms_done = 0
        self.bytes_planned = self.bytes_done = 0  # of the planned ranges, read by proxies

    def event(self, event: str, vm: str, fields: Mapping[str, Any]) -> None:
        with self._lock:
            if event == "job-planned":
                self.vms_total = int(fields.get("vms", 0) or 0)
                self._vms(self.vms_done, self.vms_total)
            elif event == "disk-planned":
                self.bytes_planned += int(fields.get("bytes_planned", 0) or 0)
                self._data(self.bytes_done, self.bytes_planned)
            elif event == "task-done":
                self.bytes_done += int(fields.get("bytes", 0) or 0)
                self._data(self.bytes_done, self.bytes_planned)
            elif event == "vm-done":
                self.vms_done += 1
                self._vms(self.vms_done, self.vms_total)
                self._note(vm_line(vm, fields))


def vm_line(vm: str, fields: Mapping[str, Any]) -> str:
    """ "VM web1: ok, incremental, 1.2 GiB read in 14.2 s" for a vm-done event."""
    read = int(fields.get("bytes_read", 0) or 0)
    secs = float(fields.get("seconds", 0) or 0)
    mode = fields.get("mode", "") or "-"
    return f"VM {vm}: {fields.get('status', '?')}, {mode}, {size_text(read)} read in {secs:.1f} s"
