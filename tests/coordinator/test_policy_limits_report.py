"""Policy selection, concurrency slots, backup window, report and exit status."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time

import pytest

from coordinator import report
from coordinator.discovery import DiskInfo, VmInfo
from coordinator.limits import BackupWindow, Cancelled, KeyedLimiter, SnapshotSlots
from coordinator.policy import select
from coordinator.settings import CopySettings, PolicySettings


def vm(name: str, dc="dc1", cluster="c1", folder="", skip="", uuid="") -> VmInfo:
    return VmInfo(
        vcenter="vc",
        moref=f"vm-{name}",
        name=name,
        uuid=uuid or f"u-{name}",
        instance_uuid=f"i-{name}",
        datacenter=dc,
        cluster=cluster,
        folder=folder,
        host="h1",
        host_moref="host-1",
        template=False,
        connection_state="connected",
        cbt_enabled=True,
        consolidation_needed=False,
        disks=[DiskInfo(2000, "d", 10, "[ds] a/a.vmdk", "ds", "persistent", "F", "", 1000, 0)],
        skip_reason=skip,
    )


def test_policy_selection() -> None:
    vms = [
        vm("web-1", folder="prod/web"),
        vm("web-2", folder="prod"),
        vm("db-1", folder="prod/db", cluster="c2"),
        vm("web-3", dc="dc2", folder="prod/web"),
        vm("web-tmpl", folder="prod/web", skip="template"),
        vm("web-x", folder="production"),
    ]
    p = PolicySettings(name="p", datacenters=["dc1"], folders=["prod"], names=["web-*"])
    s = select(vms, p)
    assert [v.name for v in s.selected] == ["web-1", "web-2"]
    assert [v.name for v in s.skipped] == ["web-tmpl"]
    p2 = PolicySettings(name="p", clusters=["c2"])
    assert [v.name for v in select(vms, p2).selected] == ["db-1"]
    p3 = PolicySettings(name="p", exclude=["web-[0-9]", "u-db-1"])
    assert [v.name for v in select(vms, p3).selected] == ["web-x"]


def test_policy_validation() -> None:
    with pytest.raises(ValueError, match="schedule"):
        PolicySettings(name="p", schedule="not cron")
    with pytest.raises(ValueError, match="routing"):
        PolicySettings(name="p", routing="rack")
    with pytest.raises(ValueError, match="'site-b' must be an absolute path"):
        CopySettings(to="site-b")
    assert not PolicySettings(name="p").copy.enabled
    assert CopySettings(to="/mnt/site-b").enabled
    s3 = CopySettings(to="s3://backups/site-b", s3_config="/etc/vmbackup/s3.toml")
    assert s3.enabled and s3.cache_dir == ""
    with pytest.raises(ValueError, match="is on S3: its S3 config file is needed"):
        CopySettings(to="s3://backups/site-b")
    with pytest.raises(ValueError, match="only for an s3://BUCKET/PREFIX target"):
        CopySettings(to="/mnt/site-b", s3_config="/etc/vmbackup/s3.toml")
    with pytest.raises(ValueError, match="'cache' must be an absolute path"):
        CopySettings(to="s3://backups/b", s3_config="/etc/s3.toml", cache_dir="cache")


def test_copy_in_the_report_and_its_history_round_trip() -> None:
    r = report.JobReport(job_id="j1", policy="p", coordinator="c")
    r.copy = report.CopyReport(
        "/mnt/b", copied=2, present=5, failed=["P1: damaged"], chunks_sent=3, bytes_sent=3 << 20
    )
    r.finish()
    assert r.status == report.OK  # a copy's failure is not the backup's
    assert (
        "copy to /mnt/b: 2 point(s) copied, 5 there already, 1 failed (P1: damaged);"
        " 3 chunks (3.0 MiB) sent"
    ) in r.to_text()
    back = report.JobReport.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back.copy == r.copy
    r.copy = report.CopyReport("/mnt/b", error="target repository: gone")
    assert "copy to /mnt/b: stopped: target repository: gone" in r.to_text()


def test_keyed_limiter_holds_under_contention() -> None:
    lim = KeyedLimiter(2, "t")
    active = {"h1": 0}
    peak = {"h1": 0}
    lock = threading.Lock()

    def worker() -> None:
        with lim.hold(["h1"]):
            with lock:
                active["h1"] += 1
                peak["h1"] = max(peak["h1"], active["h1"])
            time.sleep(0.01)
            with lock:
                active["h1"] -= 1

    ts = [threading.Thread(target=worker) for _ in range(12)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert peak["h1"] == 2
    assert lim.peak["h1"] == 2
    assert lim.held("h1") == 0


def test_snapshot_slots_per_datastore_and_cancel() -> None:
    slots = SnapshotSlots(per_host=5, per_datastore=1)
    cancel = threading.Event()
    with slots.hold("h1", ["ds1", "ds2"]):
        cancel.set()
        with pytest.raises(Cancelled), slots.hold("h2", ["ds2"], cancel):
            pass
    assert slots.hosts.held("h2") == 0  # released after the failed datastore wait
    with slots.hold("h2", ["ds2"]):
        pass


def test_backup_window() -> None:
    w = BackupWindow("22:00", "06:00")
    day = dt.datetime(2024, 5, 1)
    assert w.is_open(day.replace(hour=23))
    assert w.is_open(day.replace(hour=5, minute=59))
    assert not w.is_open(day.replace(hour=6))
    assert w.closes_at(day.replace(hour=23)) == dt.datetime(2024, 5, 2, 6, 0)
    assert w.closes_at(day.replace(hour=12)) is None
    assert BackupWindow().is_open(day)


def test_report_text_json_and_exit_status(tmp_path) -> None:
    r = report.JobReport(job_id="j1", policy="p", coordinator="c")
    v = report.VmReport("vc", "web-1", "vm-1", "u1", status=report.OK, consistency="quiesced")
    v.disks.append(
        report.DiskReport(
            2000,
            "Hard disk 1",
            100 * 2**20,
            "full",
            "no previous restore point",
            8 * 2**20,
            2,
            status=report.OK,
        )
    )
    r.vms.append(v)
    r.vms.append(report.VmReport("vc", "t", "vm-2", "u2", status=report.SKIPPED, reason="template"))
    r.finish()
    assert report.exit_status(r) == report.EXIT_OK
    text = r.to_text()
    assert "full, 8.0 MiB of 100.0 MiB in 2 task(s) (no previous restore point)" in text
    assert "template" in text
    js, _txt = r.write(tmp_path)
    d = json.loads(js.read_text())
    assert d["counts"]["ok"] == 1 and d["vms"][0]["disks"][0]["mode"] == "full"
    r.vms.append(report.VmReport("vc", "x", "vm-3", "u3", status=report.FAILED, reason="boom"))
    r.finish()
    assert r.status == report.PARTIAL and report.exit_status(r) == report.EXIT_SOME_FAILED
