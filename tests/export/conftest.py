"""Fixtures for export tests: the repository tests' small repositories, and a
`vmbackup export` running as an operator starts it (real nbdkit, our plugin)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.repository.conftest import enc_repo, repo  # noqa: F401  (fixtures)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Export:
    """`vmbackup export ... --json` in a child process: ``serving`` is its first line."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vmbackup", "export", "--json", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # EOF if it failed to start
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"export did not start (status {self.proc.wait()}): {err}")
        self.serving: dict[str, Any] = json.loads(line)
        self.uri: str = self.serving["uri"]
        self.stopped: dict[str, Any] = {}
        self.stderr = ""

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        out, self.stderr = self.proc.communicate(timeout=60)
        lines = [json.loads(ln) for ln in out.splitlines() if ln.strip()]
        self.stopped = lines[-1] if lines else {}
        return self.proc.returncode


@pytest.fixture
def start_export() -> Iterator[Any]:
    started: list[Export] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Export:
        ex = Export(list(args), env)
        started.append(ex)
        return ex

    yield start
    for ex in started:
        if ex.proc.poll() is None:
            ex.stop()
