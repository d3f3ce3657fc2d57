"""During a broker outage a publisher and a consumer each log one warning with the reason
and one line when connected again, with how long it was down; no traceback, nothing from
pika, however many attempts they make. A real process logging as a service does, behind a
TCP relay to the real RabbitMQ that the test switches off and on."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from common.amqp import BrokerParams

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


class SwitchRelay:
    """127.0.0.1:<port> forwarded to the broker while on; off closes every connection and
    the listening socket, so connection attempts are refused."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._srv: socket.socket | None = None
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()

    def on(self) -> None:
        self._srv = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self._srv,), daemon=True).start()

    def off(self) -> None:
        with self._lock:
            socks, self._socks = self._socks, []
            srv, self._srv = self._srv, None
        for s in [*socks, *([srv] if srv else [])]:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def _accept(self, srv: socket.socket) -> None:
        while True:
            try:
                client, _ = srv.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def _lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def _wait_for(path: Path, event: str, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(1 for r in _lines(path) if r.get("event") == event) >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"no {count} x {event!r} within {timeout}s:\n{path.read_text()[-3000:]}")


def test_one_warning_per_outage_and_one_line_when_back(
    broker: BrokerParams, tmp_path: Path
) -> None:
    relay = SwitchRelay(broker.host_port())
    url = broker.url.replace(f":{broker.host_port()[1]}/", f":{relay.port}/")
    log = tmp_path / "child.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "w") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.common.reconnect_child", url],
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
        )
    try:
        # 1: the broker is unreachable at start, for many attempts (backoff capped at 0.3 s)
        _wait_for(log, "broker unreachable, retrying", 2)
        time.sleep(3)
        relay.on()
        _wait_for(log, "broker connection back", 2)
        _wait_for(log, "consumer started", 1)
        # 2: connected, then lost for a few seconds (every attempt refused), then back
        relay.off()
        _wait_for(log, "broker connection lost, reconnecting", 2)
        time.sleep(3)
        relay.on()
        _wait_for(log, "broker connection back", 4)
        time.sleep(0.5)
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(30)
        relay.off()
    records = _lines(log)
    text = log.read_text()
    assert "Traceback" not in text and not any("exception" in r for r in records), text
    assert not [r for r in records if str(r.get("logger", "")).startswith("pika")], text
    by = {}
    for r in records:
        if r.get("event", "").startswith("broker"):
            by.setdefault((r["name"], r["event"]), []).append(r)
    for name in ("test-publisher", "test-consumer"):
        assert len(by[(name, "broker unreachable, retrying")]) == 1, text
        assert len(by[(name, "broker connection lost, reconnecting")]) == 1, text
        back = by[(name, "broker connection back")]
        assert len(back) == 2, text
        # down about 3 s each time, over several attempts
        assert all(r["down_seconds"] >= 2.5 and r["attempts"] >= 3 for r in back), back
        assert all(r["level"] == "info" for r in back)
    warnings = [r for r in records if r.get("level") in ("warning", "error")]
    assert len(warnings) == 4, text  # one per outage per connection
    assert all(r["error"] for r in warnings), warnings
