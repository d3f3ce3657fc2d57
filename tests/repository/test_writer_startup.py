"""A role that cannot run on its config says which key is missing and exits 2 before it
logs "starting" or opens its metrics port: a writer never looks started on a config
it rejects (a Pod's log, a supervisor's "started" line)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def vmb(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMBACKUP_")}
    return subprocess.run(
        [sys.executable, "-m", "vmbackup", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**env, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        timeout=60,
        check=False,
    )


def test_writer_without_a_config_fails_before_starting(tmp_path: Path) -> None:
    r = vmb("writer", cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert (
        "vmbackup writer: config error: (no config file: give --config FILE): repository.path:"
        " not set" in r.stderr
    ), r.stderr
    assert '"starting"' not in r.stdout + r.stderr


def test_writer_config_without_repository_path_fails_before_starting(tmp_path: Path) -> None:
    cfg = tmp_path / "writer.toml"
    cfg.write_text('[writer]\nname = "w1"\n[metrics]\nport = 0\n')
    r = vmb("writer", "--config", str(cfg), cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"config error: {cfg}: repository.path: not set" in r.stderr, r.stderr
    assert '"starting"' not in r.stdout + r.stderr


def test_coordinator_names_every_missing_key_at_once_before_starting(tmp_path: Path) -> None:
    cfg = tmp_path / "coord.toml"
    cfg.write_text('[metrics]\nport = 0\n[[policies]]\nname = "p"\nvcenters = ["nope"]\n')
    r = vmb("backup", "--config", str(cfg), "--policy", "p", cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [x for x in r.stderr.splitlines() if "config error" in x]
    assert [x.split(f"{cfg}: ", 1)[1].split(":")[0] for x in lines] == [
        "repository.path",
        "vcenters",
        "policies[0].vcenters[0]",
    ], r.stderr
    assert '"starting"' not in r.stdout + r.stderr
