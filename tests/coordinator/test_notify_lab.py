"""Job notifications and the job history after real jobs: `vmbackup backup` (a process)
and the daemon against the lab, the broker and a repository on disk; the test's protocol
peer (harness.py) answers tasks and commits and keeps each JobRecord through the writer's
own handler. Webhooks go to a real local HTTP server."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.config import Secret
from coordinator.daemon import Daemon
from coordinator.notify.notifier import Notifier
from coordinator.settings import PolicySettings, WebhookSettings
from lab import Lab
from lab.stack import Stack, free_port, toml_str
from tests.coordinator.conftest import MiB
from tests.coordinator.peer_rig import Rig, peer_rig, small_lab
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with small_lab() as lab:
        yield lab


@pytest.fixture
def rig(lab: Lab, make_env: Any, amqp_vhost: str, tmp_path: Path) -> Iterator[Rig]:
    with peer_rig(lab, make_env, amqp_vhost, tmp_path) as r:
        yield r


def webhook_toml(name: str, url: str, **keys: Any) -> str:
    lines = [f"[[coordinator.webhooks]]\nname = {toml_str(name)}\nurl = {toml_str(url)}"]
    lines += [f"{k} = {v if k == 'token' else json.dumps(v)}" for k, v in keys.items()]
    return "\n" + "\n".join(lines) + "\n"


def backup(stack: Stack, cfg: Path, policy: str = "all") -> tuple[Any, dict[str, Any]]:
    rp = stack.workdir / f"report-{policy}-{len(list(stack.workdir.glob('report-*')))}.json"
    run = stack.run(
        "backup", "--config", str(cfg), "--policy", policy, "--report", str(rp), timeout=300
    )
    return run, (json.loads(rp.read_text()) if rp.exists() else {})


def vmbackup_json(stack: Stack, *args: str) -> Any:
    run = stack.run(*args, "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    return json.loads(run.stdout)["result"]


def test_backup_notifies_and_keeps_its_report_in_the_history(rig: Rig, lab: Lab) -> None:
    stack = rig.stack
    token = stack.workdir / "webhook-token"
    token.write_text("tok-123\n")
    down = f"http://127.0.0.1:{free_port()}/hook"
    with Receiver(answers=[(500, {}), (200, {})]) as ok_hook, Receiver() as failures_only:
        extra = (
            webhook_toml(
                "ops",
                ok_hook.url,
                token=f"{{ file = {toml_str(str(token))} }}",
                backoff_s=0.1,
            )
            + webhook_toml("down", down, retries=1, backoff_s=0.0)
            + webhook_toml("pager", failures_only.url, on=["failed", "partial"])
        )
        cfg = stack.write_config(stack.workdir / "notify.toml")
        cfg.write_text(cfg.read_text() + extra)

        run, rep = backup(stack, cfg)
        # a webhook that cannot be reached is a warning: the backup's status stands
        assert run.returncode == 0, run.stdout + run.stderr
        warning = "vmbackup backup: warning: notification to webhook 'down' (http://127.0.0.1:"
        assert warning in run.stderr and "failed after 2 attempt(s)" in run.stderr, run.stderr
        assert "'ops'" not in run.stderr
        # tried again after the 500, the same body; signed with the token from its file
        assert len(ok_hook.received) == 2 and ok_hook.received[0].body == ok_hook.received[1].body
        req = ok_hook.received[1]
        assert req.headers["X-Vmbackup-Token"] == "tok-123"
        mac = hmac.new(b"tok-123", req.body, hashlib.sha256).hexdigest()
        assert req.headers["X-Vmbackup-Signature"] == f"sha256={mac}"
        body = req.json()
        assert body["event"] == "job.finished"
        assert {k: v for k, v in body.items() if k not in ("event", "schema")} == rep
        assert (body["policy"], body["coordinator"], body["status"]) == ("all", "stack", "ok")
        names = sorted(v["name"] for v in lab.vms())
        assert sorted(v["name"] for v in body["vms"]) == names
        for v in body["vms"]:
            assert v["status"] == "ok" and v["point_id"] and v["uuid"]
            assert v["bytes_read"] > 0  # what was allocated: the data written, a chunk
            assert v["bytes_read"] == sum(d["bytes_read"] for d in v["disks"])
            assert v["bytes_sent"] == sum(d["bytes_sent"] for d in v["disks"])
        assert body["bytes_read"] == sum(v["bytes_read"] for v in body["vms"])
        assert failures_only.received == []  # on = failed, partial

        # a VM that fails: exit 1 as before, and the failure-only webhook hears of it
        bad = names[0]
        lab.write_guest_data(bad, 2000, MiB, b"new" * 1024)  # a task to fail
        rig.peer.fail_vm.add(bad)
        run, failed_rep = backup(stack, cfg)
        assert run.returncode == 1, run.stdout + run.stderr
        (page,) = failures_only.received
        doc = page.json()
        assert doc["status"] == "partial" and doc["job_id"] == failed_rep["job_id"]
        vm = next(v for v in doc["vms"] if v["name"] == bad)
        assert vm["status"] == "failed" and "injected read failure" in vm["reason"]

        # a job that cannot start (an unknown policy) still tells the failure webhook
        run, nothing = backup(stack, cfg, "nightlyy")
        assert run.returncode == 2
        assert len(failures_only.received) == 2
        assert failures_only.received[1].json()["error"] == nothing["error"]

    # the job history: both jobs that ran, oldest first, from the repository
    jobs = vmbackup_json(stack, "jobs", "list", "--config", str(cfg))["jobs"]
    assert [(j["job_id"], j["status"]) for j in jobs] == [
        (rep["job_id"], "ok"),
        (failed_rep["job_id"], "partial"),
    ]
    assert jobs[0]["bytes_read"] == rep["bytes_read"] and jobs[1]["counts"]["failed"] == 1
    assert len(rig.peer.records) == 2  # the job that never started has no record
    last = vmbackup_json(stack, "jobs", "list", "--repo", str(stack.repo), "--last", "1")
    assert [j["job_id"] for j in last["jobs"]] == [failed_rep["job_id"]]
    shown = vmbackup_json(stack, "jobs", "show", "--repo", str(stack.repo), rep["job_id"])
    assert shown == rep  # the very report `backup --report` wrote
    text = stack.run("jobs", "show", "--repo", str(stack.repo), failed_rep["job_id"])
    assert text.returncode == 0, text.stderr
    assert f"job {failed_rep['job_id']}  policy all  status partial" in text.stdout
    assert f"FAILED   lab/{bad}" in text.stdout and "injected read failure" in text.stdout


def test_the_daemon_notifies_after_each_job(rig: Rig) -> None:
    rt = rig.env.start()
    with Receiver() as hook:
        daemon = Daemon(
            rt,
            [PolicySettings(name="all")],
            notifier=Notifier([WebhookSettings(name="ops", url=Secret(hook.url, "test"))]),
        )
        assert daemon.start_job("all", "test")
        assert daemon.wait_idle(240)
        daemon.shutdown()
        (rep,) = daemon.reports
        (req,) = hook.received
    assert req.json()["job_id"] == rep.job_id and req.json()["status"] == "ok"
    assert rig.env.repo.job_report(rep.job_id)["status"] == "ok"


def test_jobs_list_of_an_empty_history(rig: Rig) -> None:
    run = rig.stack.run("jobs", "list", "--repo", str(rig.stack.repo))
    assert run.returncode == 0, run.stderr
    assert "0 job(s)" in run.stdout
    missing = rig.stack.run("jobs", "show", "--repo", str(rig.stack.repo), "all-x")
    assert missing.returncode == 1 and "not a job id" in missing.stderr
    assert isinstance(missing, subprocess.CompletedProcess)
