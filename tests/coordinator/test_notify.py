"""Job notifications against a real local HTTP(S) server: the body, retries, the token
header read from a file and the body's signature, the status filter, what is never tried
again, and verified HTTPS."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.config import Secret
from coordinator import report
from coordinator.metrics import REGISTRY
from coordinator.notify.notifier import Notifier
from coordinator.settings import WebhookSettings
from lab.stack import free_port, toml_str
from tests.tls_broker import issue_server_cert, make_ca
from tests.webhook_receiver import Receiver
from vmbackup.config_schema import check_config


def job_report(status: str = "partial") -> report.JobReport:
    rep = report.JobReport("nightly-20260101T220000Z-abcdef", "nightly", "coord-1", started=1000.0)
    ok = report.VmReport("vc1", "web1", "vm-1", "uuid-1", "esx1", point_id="web1-point")
    ok.disks = [
        report.DiskReport(2000, "Hard disk 1", 8 << 20, "full", bytes_read=5000, bytes_sent=3000),
        report.DiskReport(2001, "Hard disk 2", 8 << 20, "incremental", bytes_read=7, bytes_sent=1),
    ]
    ok.status = report.OK
    bad = report.VmReport("vc1", "db1", "vm-2", "uuid-2", status=report.FAILED)
    bad.reason, bad.cause = "injected read failure", "disk_read"
    rep.vms = [ok, bad] if status != "ok" else [ok]
    rep.retention = report.RetentionReport("last 3", kept=3, removed_count=1)
    rep.finish()
    rep.finished = 1012.5
    assert rep.status == status
    return rep


def hook(url: str, **kw: Any) -> WebhookSettings:
    return WebhookSettings(name=kw.pop("name", "ops"), url=Secret(url, "test"), **kw)


def sent(name: str, result: str) -> float:
    labels = {"webhook": name, "result": result}
    return REGISTRY.get_sample_value("vmbackup_coordinator_notifications_total", labels) or 0.0


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def test_the_body_is_the_job_report_with_each_vm_outcome(receiver: Receiver) -> None:
    rep = job_report()
    before = sent("body", "sent")
    assert Notifier([hook(receiver.url, name="body")]).notify(rep) == []
    (req,) = receiver.received
    assert req.path == "/hooks/vmbackup"
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["X-Vmbackup-Event"] == "job.finished"
    assert req.headers["X-Vmbackup-Delivery"] == rep.job_id
    assert "X-Vmbackup-Signature" not in req.headers  # no token, no signature
    doc = req.json()
    assert doc["event"] == "job.finished" and doc["schema"] == 1
    # one mapping: exactly the report's own, as `backup --report` writes it
    assert {k: v for k, v in doc.items() if k not in ("event", "schema")} == rep.to_dict()
    assert (doc["job_id"], doc["policy"], doc["coordinator"]) == (rep.job_id, "nightly", "coord-1")
    assert (doc["status"], doc["started"], doc["finished"], doc["seconds"]) == (
        "partial",
        1000.0,
        1012.5,
        12.5,
    )
    web, db = doc["vms"]
    assert (web["name"], web["uuid"], web["status"], web["point_id"]) == (
        "web1",
        "uuid-1",
        "ok",
        "web1-point",
    )
    assert (web["bytes_read"], web["bytes_sent"]) == (5007, 3001)
    assert (db["status"], db["cause"], db["reason"]) == (
        "failed",
        "disk_read",
        "injected read failure",
    )
    assert doc["counts"] == {"ok": 1, "partial": 0, "failed": 1, "skipped": 0}
    assert (doc["bytes_read"], doc["bytes_sent"]) == (5007, 3001)
    assert doc["retention"]["kept"] == 3 and doc["retention"]["removed_count"] == 1
    assert sent("body", "sent") == before + 1


def test_a_500_is_tried_again_then_succeeds() -> None:
    pauses: list[float] = []
    with Receiver(answers=[(500, {}), (503, {}), (200, {})]) as r:
        before = sent("flaky", "sent")
        notifier = Notifier([hook(r.url, name="flaky", backoff_s=0.5)], sleep=pauses.append)
        assert notifier.notify(job_report()) == []
        assert len(r.received) == 3
        assert len({x.body for x in r.received}) == 1  # the same delivery each time
        assert {x.headers["X-Vmbackup-Delivery"] for x in r.received} == {job_report().job_id}
    assert pauses == [0.5, 1.0]  # doubling
    assert sent("flaky", "sent") == before + 1


def test_429_waits_as_long_as_the_receiver_asks() -> None:
    pauses: list[float] = []
    with Receiver(answers=[(429, {"Retry-After": "7"}), (204, {})]) as r:
        assert Notifier([hook(r.url)], sleep=pauses.append).notify(job_report()) == []
        assert len(r.received) == 2
    assert pauses == [7.0]


def test_retries_are_bounded_and_the_failure_is_said() -> None:
    pauses: list[float] = []
    with Receiver(answers=[(502, {})]) as r:
        before = sent("down", "failed")
        notifier = Notifier([hook(r.url, name="down", retries=2)], sleep=pauses.append)
        (line,) = notifier.notify(job_report())
        assert len(r.received) == 3
    assert "webhook 'down' (http://127.0.0.1:" in line
    assert "failed after 3 attempt(s): HTTP 502: refused with 502" in line
    assert "/hooks/" not in line  # the path may be the URL's secret: never shown
    assert len(pauses) == 2 and sent("down", "failed") == before + 1


def test_no_connection_is_tried_again_then_reported() -> None:
    pauses: list[float] = []
    url = f"http://127.0.0.1:{free_port()}/x"
    (line,) = Notifier([hook(url, retries=1)], sleep=pauses.append).notify(job_report())
    assert "failed after 2 attempt(s): ConnectionRefusedError" in line, line
    assert len(pauses) == 1


@pytest.mark.parametrize(("status", "why"), [(400, "HTTP 400"), (302, "redirects are not")])
def test_a_refusal_or_a_redirect_is_not_tried_again(status: int, why: str) -> None:
    with Receiver(answers=[(status, {"Location": "http://127.0.0.1:1/elsewhere"})]) as r:
        (line,) = Notifier([hook(r.url)], sleep=lambda _s: None).notify(job_report())
        assert len(r.received) == 1
    assert why in line and "after 1 attempt(s)" in line


def test_only_the_statuses_in_on_notify(receiver: Receiver) -> None:
    failures_only = hook(receiver.url, on=["failed", "partial"])
    assert Notifier([failures_only]).notify(job_report("ok")) == []
    assert receiver.received == []
    Notifier([failures_only]).notify(job_report("partial"))
    assert len(receiver.received) == 1


def test_the_token_comes_from_its_file_and_signs_the_body(
    receiver: Receiver, tmp_path: Path
) -> None:
    (tmp_path / "token").write_text("s3cret-token\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f"""
[[coordinator.webhooks]]
name = "tickets"
url = {toml_str(receiver.url)}
token = {{ file = {toml_str(str(tmp_path / "token"))} }}
header = "Authorization"
"""
    )
    found = check_config(cfg)
    assert found.problems == [] and found.config is not None
    (w,) = found.config.coordinator.webhooks
    assert Notifier([w]).notify(job_report()) == []
    (req,) = receiver.received
    assert req.headers["Authorization"] == "s3cret-token"
    expected = hmac.new(b"s3cret-token", req.body, hashlib.sha256).hexdigest()
    assert req.headers["X-Vmbackup-Signature"] == f"sha256={expected}"


def test_slack_format_is_a_text_summary_naming_what_failed(receiver: Receiver) -> None:
    Notifier([hook(receiver.url, format="slack")]).notify(job_report())
    (req,) = receiver.received
    doc = req.json()
    assert list(doc) == ["text"]
    text = doc["text"]
    assert text.startswith(":warning: vmbackup job `nightly-20260101T220000Z-abcdef`")
    assert "*partial*" in text and "1 ok, 0 partial, 1 failed, 0 skipped" in text
    assert "• failed vc1/db1 [disk_read]: injected read failure" in text
    assert "retention (last 3): 3 point(s) kept, 1 removed" in text


def test_https_is_verified_against_the_ca_file(tmp_path: Path) -> None:
    ca = make_ca(tmp_path, "webhook-ca")
    cert = issue_server_cert(ca, tmp_path, ["localhost"], ips=["127.0.0.1"])
    with Receiver(tls=cert) as r:
        assert r.url.startswith("https://")
        pinned = hook(r.url, name="tls", ca_file=str(ca.cert_path))
        assert Notifier([pinned]).notify(job_report()) == []
        assert len(r.received) == 1
        # the system CAs do not know this one: refused, and not tried again
        (line,) = Notifier([hook(r.url, name="tls2")], sleep=lambda _s: None).notify(job_report())
        assert "after 1 attempt(s): TLS: " in line and "certificate" in line, line
        assert len(r.received) == 1


def test_a_bad_ca_file_fails_that_webhook_only(receiver: Receiver, tmp_path: Path) -> None:
    broken = hook("https://127.0.0.1:1/x", name="broken", ca_file=str(tmp_path / "none.pem"))
    lines = Notifier([broken, hook(receiver.url)]).notify(job_report())
    assert len(lines) == 1 and "ca_file " in lines[0] and "none.pem" in lines[0]
    assert len(receiver.received) == 1  # the other webhook was still sent


def test_bad_webhook_settings_are_named_by_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        """
[[coordinator.webhooks]]
name = "chat"
url = "http://chat.example.com/hooks/x"
token = "inline-token"
on = ["failure"]
format = "teams"
timeout_s = 0
[[coordinator.webhooks]]
name = "chat"
url = "ftp://x"
"""
    )
    problems = [str(p) for p in check_config(cfg).problems]
    assert problems == [
        "coordinator.webhooks[0].url: http:// to chat.example.com: the token would cross"
        " the network in clear; use https://",
        "coordinator.webhooks[0].on: ['failure']: expected some of ok, partial, failed",
        "coordinator.webhooks[0].format: 'teams': json or slack",
        "coordinator.webhooks[0].timeout_s: must be > 0",
        "coordinator.webhooks[1].url: expected an http:// or https:// URL with a host",
    ], problems
    cfg.write_text(
        '[[coordinator.webhooks]]\nname = "chat"\nurl = "https://a.example.com/"\n'
        '[[coordinator.webhooks]]\nname = "chat"\nurl = "https://b.example.com/"\n'
    )
    problems = [str(p) for p in check_config(cfg).problems]
    assert problems == ["coordinator.webhooks[1].name: 'chat' is also the name of webhooks[0]"]
