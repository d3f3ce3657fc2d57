"""Every line of a role process carries its role, whichever thread or library logs it;
work handed to another thread with ``in_log_context`` keeps the job/vm it was bound to."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_role_on_every_thread_and_context_carried_on_request() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tests.common.log_context_child"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
        check=True,
    ).stdout
    lines = {r["event"]: r for r in map(json.loads, out.splitlines())}
    assert set(lines) == {
        "main",
        "thread",
        "stdlib on a thread",
        "pool",
        "pool in context",
        "pool afterwards",
    }, out
    assert all(r["role"] == "writer" for r in lines.values()), out
    assert lines["stdlib on a thread"]["logger"] == "library"
    for bound_here in ("main", "pool in context"):
        assert (lines[bound_here]["job"], lines[bound_here]["vm"]) == ("j-1", "vm-1"), out
    for elsewhere in ("thread", "stdlib on a thread", "pool", "pool afterwards"):
        assert "job" not in lines[elsewhere], out
