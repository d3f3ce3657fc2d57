"""The lab's Ceph RGW (lab/ceph_rgw.py): idempotent start, status and stop by pid files,
the one JSON line of ``python -m lab rgw``, the key file's mode, and a clean stop that
keeps a memstore cluster's data for the next start."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lab import ceph_rgw
from repository.s3_storage import S3Storage
from tests.rgw import Rgw

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent.parent


def _lab(*argv: str) -> tuple[int, dict[str, object]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(
        [sys.executable, "-m", "lab", "rgw", *argv], capture_output=True, text=True, env=env,
        check=False, timeout=300,
    )  # fmt: skip
    (line,) = res.stdout.splitlines()  # one JSON line, nothing else on stdout
    doc: dict[str, object] = json.loads(line)
    return res.returncode, doc


def test_start_reuses_a_running_gateway(rgw: Rgw) -> None:
    rc, doc = _lab("start", "--data-dir", str(rgw.data_dir))
    assert rc == 0 and doc["reused"] is True and doc["running"] is True
    assert doc["pids"] == rgw.info.pids and doc["endpoint"] == rgw.endpoint
    assert set(doc) >= {"endpoint", "region", "credentials_file", "pids", "objectstore"}
    rc, doc = _lab("status", "--data-dir", str(rgw.data_dir))
    assert rc == 0 and doc["running"] is True and doc["pids"] == rgw.info.pids
    for name, pid in rgw.info.pids.items():  # the pid files name the daemons that run
        assert int((rgw.data_dir / "run" / f"{name}.pid").read_text()) == pid


def test_credentials_are_a_private_file_and_on_no_command_line(rgw: Rgw) -> None:
    mode = stat.S_IMODE(rgw.credentials_file.stat().st_mode)
    assert mode == 0o600
    assert stat.S_IMODE(rgw.data_dir.stat().st_mode) == 0o700  # keyrings too
    secret = S3Storage(rgw.location("unused-bucket")).loc.credentials().secret_key
    for pid in rgw.info.pids.values():
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert secret.encode() not in cmdline


def test_status_of_nothing(tmp_path: Path) -> None:
    rc, doc = _lab("status", "--data-dir", str(tmp_path / "none"))
    assert rc == 1 and doc["running"] is False and doc["pids"] == {}
    rc, doc = _lab("stop", "--data-dir", str(tmp_path / "none"))  # stopping nothing: fine
    assert rc == 0 and doc["pids"] == {}


@pytest.mark.slow
def test_clean_stop_keeps_data_and_start_restarts(tmp_path: Path) -> None:
    """A second cluster of its own (two bootstraps' worth of time)."""
    d = tmp_path / "ceph"
    info = ceph_rgw.start(d)
    try:
        gw = Rgw(info)
        s = gw.new_bucket()
        s.write("config", [b"kept across a clean stop"])
        stopped = ceph_rgw.stop(d)
        assert stopped.pids == {} and not stopped.running
        assert not any(ceph_rgw.process_runs(p) for p in info.pids.values())  # zombies: exited
        again = ceph_rgw.start(d)
        assert again.running and not again.reused and again.endpoint == info.endpoint
        assert set(again.pids.values()).isdisjoint(info.pids.values())
        assert S3Storage(s.loc).read("config") == b"kept across a clean stop"
    finally:
        ceph_rgw.stop(d)
    assert ceph_rgw.status(d).pids == {}
