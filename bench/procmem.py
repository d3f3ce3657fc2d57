"""Memory of a process as Linux reports it in /proc/PID/status.

VmHWM (peak resident) rather than getrusage's ru_maxrss: Linux carries ru_maxrss across
fork + exec, so a child would report its (larger) benchmark parent's peak.
"""

from __future__ import annotations

from pathlib import Path


def proc_memory(pid: int | str = "self") -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (peak resident) of a process, in bytes."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    if len(out) != 2:
        raise RuntimeError(f"no VmRSS/VmHWM in /proc/{pid}/status")
    return out
