"""`vmbackup backup` and the daemon tell the truth about what they did not do.

Each case is a run that left VMs of its policy without a new point: a vCenter not
reached (the only one, or one of two), a policy that selects nothing although its last
job backed VMs up, a VM whose backup failed. `vmbackup backup` runs as a process against
the lab, the broker and a repository on disk; the test's protocol peer (harness.py)
answers its tasks and commits. Each must exit non-zero with the reason on stderr and in
the JSON report; the daemon's scheduled jobs must say the same in their reports, and
reach the vCenter once it answers again.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import Lab
from lab.stack import ROOT, Stack, free_port, toml_str
from tests.coordinator.peer_rig import Rig, peer_rig, small_lab

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with small_lab() as lab:
        yield lab


@pytest.fixture
def rig(lab: Lab, make_env: Any, amqp_vhost: str, tmp_path: Path) -> Iterator[Rig]:
    with peer_rig(lab, make_env, amqp_vhost, tmp_path) as r:
        yield r


def closed_url() -> str:
    """A vCenter URL nothing answers on: the connection is refused at once."""
    return f"https://127.0.0.1:{free_port()}/sdk"


def config(stack: Stack, name: str, extra: str = "", **vcenter: str | int) -> Path:
    """The stack's config with the lab's vCenter keys overridden and ``extra`` TOML."""
    path = stack.write_config(stack.workdir / f"{name}.toml", **vcenter)
    path.write_text(path.read_text() + extra)
    return path


def backup(stack: Stack, cfg: Path, policy: str) -> tuple[subprocess.CompletedProcess[str], Any]:
    rp = stack.workdir / f"report-{uuid.uuid4().hex[:6]}.json"
    run = stack.run(
        "backup", "--config", str(cfg), "--policy", policy, "--report", str(rp), timeout=300
    )
    doc = json.loads(rp.read_text()) if rp.exists() else {}
    return run, doc


def test_the_only_vcenter_unreachable_exits_2_naming_it(rig: Rig) -> None:
    stack = rig.stack
    cfg = config(stack, "down", url=closed_url(), retries=0)
    run, rep = backup(stack, cfg, "all")
    assert run.returncode == 2, run.stdout + run.stderr
    assert "vcenter lab: cannot connect to" in run.stderr, run.stderr
    assert rep["status"] == "failed" and "vcenter lab: cannot connect to" in rep["error"]
    assert rep["cause"] == "vcenter"
    assert "status failed" in run.stdout and "error: vcenter lab" in run.stdout


def test_one_of_two_vcenters_unreachable_exits_2_after_backing_up_the_other(
    rig: Rig, lab: Lab
) -> None:
    stack = rig.stack
    down = f"""
[[vcenters]]
name = "down"
url = {toml_str(closed_url())}
user = "backup"
password = {{ file = {toml_str(str(stack.workdir / "vcenter-password"))} }}
thumbprint = {toml_str(lab.thumbprint)}
retries = 0
"""
    run, rep = backup(stack, config(stack, "two", down), "all")
    assert run.returncode == 2, run.stdout + run.stderr
    assert "vcenter down: cannot connect to" in run.stderr, run.stderr
    assert "vcenter down" in rep["error"] and "vcenter lab" not in rep["error"]
    # the reachable vCenter's VMs were backed up all the same
    assert sorted(v["name"] for v in rep["vms"]) == sorted(v["name"] for v in lab.vms())
    assert all(v["status"] == "ok" and v["point_id"] for v in rep["vms"]), rep["vms"]


def test_a_policy_that_selects_nothing_after_it_backed_vms_up_exits_2(rig: Rig, lab: Lab) -> None:
    stack = rig.stack
    vm = lab.vms()[0]["name"]
    web = config(stack, "web", f'[[policies]]\nname = "web"\nnames = ["{vm}"]')
    run, rep = backup(stack, web, "web")
    assert run.returncode == 0, run.stdout + run.stderr
    assert [v["name"] for v in rep["vms"]] == [vm] and "vmbackup backup:" not in run.stderr
    first_job = rep["job_id"]

    # the pattern no longer matches (VMs renamed, a pattern edited): no VM, no failure
    # of any VM, and still the policy's VMs are not backed up
    lost = config(stack, "web-lost", '[[policies]]\nname = "web"\nnames = ["renamed-*"]')
    run, rep = backup(stack, lost, "web")
    assert run.returncode == 2, run.stdout + run.stderr
    why = f"policy web selected no VM, but its last job {first_job} backed up 1 VM(s): {vm}"
    assert why in run.stderr, run.stderr
    assert rep["status"] == "failed" and why in rep["error"] and rep["vms"] == []

    # a policy that never selected a VM has lost nothing
    never = config(stack, "never", '[[policies]]\nname = "never"\nnames = ["nothing-*"]')
    run, rep = backup(stack, never, "never")
    assert run.returncode == 0, run.stdout + run.stderr
    assert rep["status"] == "ok" and rep["vms"] == []


def test_a_failed_vm_exits_1_naming_it_and_why_on_stderr(rig: Rig, lab: Lab) -> None:
    stack = rig.stack
    bad, good = (v["name"] for v in lab.vms()[:2])
    rig.peer.fail_vm.add(bad)
    run, rep = backup(stack, stack.config_path, "all")
    assert run.returncode == 1, run.stdout + run.stderr
    line = next((x for x in run.stderr.splitlines() if f"failed lab/{bad}" in x), "")
    assert "injected read failure" in line, run.stderr
    assert f"lab/{good}" not in run.stderr
    vms = {v["name"]: v for v in rep["vms"]}
    assert vms[bad]["status"] == "failed" and vms[good]["status"] == "ok"


def test_a_vm_vcenter_cannot_give_is_a_failure_not_a_skip(rig: Rig, lab: Lab) -> None:
    """A VM of the policy whose host is down (runtime.connectionState "disconnected"):
    no snapshot is tried, and the run says the VM was not backed up."""
    down, up = (v["name"] for v in lab.vms()[:2])
    lab.inject(vm_connection_state=(down, "disconnected"))
    try:
        run, rep = backup(rig.stack, rig.stack.config_path, "all")
    finally:
        lab.inject(vm_connection_state=(down, "connected"))
    assert run.returncode == 1, run.stdout + run.stderr
    why = f"failed lab/{down} [vcenter]: not backed up: disconnected VM (runtime.connectionState)"
    assert why in run.stderr, run.stderr
    vms = {v["name"]: v for v in rep["vms"]}
    assert vms[down]["status"] == "failed" and vms[down]["cause"] == "vcenter"
    assert not vms[down]["snapshot"] and vms[up]["status"] == "ok"


def test_a_job_that_cannot_start_leaves_a_failed_report_not_an_old_ok(rig: Rig) -> None:
    stack = rig.stack
    cfg = stack.write_config(stack.workdir / "norepo.toml", repo=stack.workdir / "no-such-repo")
    rp = stack.workdir / "nightly.json"
    rp.write_text(json.dumps({"status": "ok"}))  # the last run's, read by a monitor
    run = stack.run("backup", "--config", str(cfg), "--policy", "all", "--report", str(rp))
    assert run.returncode == 2, run.stdout + run.stderr
    assert "cannot start: " in run.stderr and "no-such-repo" in run.stderr, run.stderr
    doc = json.loads(rp.read_text())
    assert doc["status"] == "failed" and "no-such-repo" in doc["error"], doc


def test_an_unknown_policy_leaves_a_failed_report(rig: Rig) -> None:
    stack = rig.stack
    run, rep = backup(stack, stack.config_path, "nightlyy")
    assert run.returncode == 2, run.stdout + run.stderr
    assert "no policy named 'nightlyy' (configured: all)" in run.stderr, run.stderr
    assert rep["status"] == "failed" and "no policy named 'nightlyy'" in rep["error"]


class Forwarder:
    """Forwards 127.0.0.1:``port`` to ``target`` once started: a vCenter coming back."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.target = target
        self._srv = socket.create_server(("127.0.0.1", port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._srv.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._srv.close()


def wait_report(reports: Path, policy: str, status: str, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        seen = []
        for p in sorted(reports.glob(f"{policy}-*.json")):
            with contextlib.suppress(OSError, ValueError):
                doc: dict[str, Any] = json.loads(p.read_text())
                if doc.get("status") == status:
                    return doc
                seen.append(f"{doc.get('status')} ({doc.get('error') or 'no error'})")
        time.sleep(0.3)
    raise AssertionError(f"no {status} report of {policy}; {len(seen)} others: {seen[-3:]}")


def test_daemon_job_fails_while_its_vcenter_is_down_and_reaches_it_when_back(
    rig: Rig, lab: Lab
) -> None:
    stack = rig.stack
    port = free_port()
    every_3s = '[[policies]]\nname = "often"\nschedule = "* * * * * */3"\n'
    cfg = config(stack, "daemon", every_3s, url=f"https://127.0.0.1:{port}/sdk", retries=0)
    log = open(stack.logs / "daemon.log", "wb")  # noqa: SIM115 - closed below
    daemon = subprocess.Popen(
        [sys.executable, "-m", "vmbackup", "coordinator", "--config", str(cfg)],
        cwd=ROOT,
        # VMBACKUP_TEST_BROKER would read as a config key: the config names the broker
        env={k: v for k, v in os.environ.items() if k != "VMBACKUP_TEST_BROKER"}
        | {"PYTHONPATH": str(ROOT)},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    forwarder = None
    try:
        failed = wait_report(stack.reports, "often", "failed")
        assert "vcenter lab: cannot connect to" in failed["error"], failed
        assert failed["vms"] == []
        forwarder = Forwarder(port, (lab.host, lab.port))  # vCenter answers again
        ok = wait_report(stack.reports, "often", "ok")
        assert sorted(v["name"] for v in ok["vms"]) == sorted(v["name"] for v in lab.vms())
        assert all(v["point_id"] for v in ok["vms"])
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(60)
        log.close()
        if forwarder is not None:
            forwarder.close()
    text = (stack.logs / "daemon.log").read_text()
    assert '"job_finished"' in text and "cannot connect to" in text


def test_backup_json_is_one_document_success_or_not(rig: Rig, lab: Lab) -> None:
    """--json: the report is the document's result, the reasons its error (exit status
    unchanged); no progress under --json, progress lines on stderr without it."""
    stack = rig.stack
    down = config(stack, "down-json", url=closed_url(), retries=0)
    run = stack.run("backup", "--config", str(down), "--policy", "all", "--json", timeout=300)
    assert run.returncode == 2, run.stdout + run.stderr
    doc = json.loads(run.stdout)
    assert (doc["ok"], doc["command"], doc["exit"]) == (False, "backup", 2)
    assert doc["error"]["cause"] == "vcenter"
    assert "vcenter lab: cannot connect to" in doc["error"]["message"]
    assert doc["result"]["status"] == "failed" and doc["result"]["cause"] == "vcenter"

    good = config(stack, "good-json")
    run = stack.run("backup", "--config", str(good), "--policy", "all", "--json", timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    doc = json.loads(run.stdout)
    n = len(lab.vms())
    assert doc["ok"] and doc["error"] is None and doc["result"]["counts"]["ok"] == n
    assert "backup all: VMs" not in run.stderr  # quiet under --json

    run = stack.run("backup", "--config", str(good), "--policy", "all", timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"vmbackup: backup all: VMs: {n} of {n} (100%)" in run.stderr, run.stderr
    assert "vmbackup: backup all: data read: " in run.stderr
    assert sum(x.startswith("vmbackup: VM ") for x in run.stderr.splitlines()) == n
    assert run.stdout.startswith("job ")  # the text report, not a document

    run = stack.run("backup", "--config", str(good), "--policy", "all", "--json", "--report", "-")
    assert run.returncode == 2 and json.loads(run.stdout)["error"]["cause"] == "usage"
