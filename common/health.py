"""Readiness of a process: named checks, each saying "" (ready) or why not.

Served as /ready beside /metrics (common/metrics.py): 200 "ready", or 503 with one line
per failing check, so `kubectl get pods` and a load balancer see what an operator would
otherwise only find in the logs (a writer whose repository is full, say).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

_lock = threading.Lock()
_checks: dict[str, Callable[[], str]] = {}


def add_check(name: str, check: Callable[[], str]) -> None:
    with _lock:
        _checks[name] = check


def remove_check(name: str) -> None:
    with _lock:
        _checks.pop(name, None)


def not_ready() -> list[str]:
    """'name: why' of every check that fails now (a check that raises fails)."""
    with _lock:
        checks = list(_checks.items())
    out = []
    for name, check in checks:
        try:
            why = check()
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc}"
        if why:
            out.append(f"{name}: {why}")
    return out
