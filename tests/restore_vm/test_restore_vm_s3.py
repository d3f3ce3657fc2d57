"""restore-vm from a repository on S3 (the lab's real Ceph RGW): the lab VM's point copied
there with `repo copy`, then a whole-VM restore and an instant recovery (its exports read
the point with ranged GETs), each compared byte for byte with the point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from lab.stack import ROOT
from tests.restore_vm.conftest import Env
from tests.restore_vm.test_instant_lab import (
    Instant,
    _assert_nothing_left,
    _check_moved,
    export_dir,
)
from tests.restore_vm.test_restore_vm_lab import _check_disks
from tests.s3repo.conftest import S3Repo, s3repo  # noqa: F401  (fixture)

__all__ = ["export_dir"]  # the fixture, used below


def _vmb(*args: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "vmbackup", *args], cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr


def _s3_config(env: Env, s3: S3Repo, tmp: Path) -> Path:
    """env's config with the repository on S3: path, s3_config and cache_dir."""
    text = env.config.read_text()
    local = f'path = "{env.repo_path}"'
    assert local in text
    s3_keys = f'path = "{s3.url}"\ns3_config = "{s3.config}"\ncache_dir = "{s3.cache()}"'
    cfg = tmp / "on-s3.toml"
    cfg.write_text(text.replace(local, s3_keys))
    return cfg


def test_restore_vm_and_instant_from_a_repository_on_s3(
    env: Env,
    # F811: the fixture imported above is the parameter pytest fills in
    s3repo: S3Repo,  # noqa: F811
    export_dir: Path,
    tmp_path: Path,
) -> None:
    s3 = ["--s3-config", str(s3repo.config)]
    _vmb(
        "repo", "init", s3repo.url, "--chunk-size", "256K", *s3, "--cache-dir", str(tmp_path / "c")
    )
    _vmb("repo", "copy", "--from", str(env.repo_path), "--to", s3repo.url,
         "--s3-config", str(s3repo.config), "--to-cache-dir", str(tmp_path / "c"),
         "--vm", env.plain.vm_name)  # fmt: skip
    cfg = _s3_config(env, s3repo, tmp_path)
    point = env.plain.point_id  # a copy keeps the point's id
    r = env.restore_vm(point, "from-s3", "--json", config=cfg)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)["result"]
    _check_disks(env, point, res, env.plain.disk_sha256)
    run = Instant(env, "instant-s3", export_dir, "--migrate", config=cfg)
    rc, doc = run.finish()
    assert rc == 0, run.stderr()
    _check_moved(env, doc, tmp_path, None)
    _assert_nothing_left(env, export_dir)
    for name in ("from-s3", "instant-s3"):
        [vm] = env.vms_named(name)
        if vm.runtime.powerState == "poweredOn":
            vm.PowerOffVM_Task()
        vm.Destroy_Task()
