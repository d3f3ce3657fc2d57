"""The CLI as scripts use it: names, exit status, output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from repository.repository import Repository
from tests.repository.conftest import CS, damage_chunk, make_image, stored_ids


def vmb(*args: str, env: dict[str, str] | None = None, **kw: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vmbackup", *args],
        capture_output=True,
        env={**os.environ, **(env or {})},
        check=False,
        **kw,  # type: ignore[arg-type]
    )


def test_cli_round_trip(tmp_path: Path) -> None:
    repo = str(tmp_path / "repo")
    img = tmp_path / "d.img"
    data = make_image(img, "rtzrds")
    assert vmb("repo", "init", repo, "--chunk-size", "256K").returncode == 0
    r = vmb("repo", "import-disk", "--repo", repo, "--vm", "web", "--disk", "2000", str(img))
    assert r.returncode == 0 and b"(full)" in r.stdout, r.stderr
    r = vmb("repo", "import-disk", "--repo", repo, "--vm", "web", "--disk", "2000", str(img))
    assert b"incremental" in r.stdout and b" 0 new" in r.stdout
    doc = json.loads(vmb("repo", "list", "--repo", repo, "--json").stdout)["result"]
    assert len(doc["points"]) == 2 and doc["totals"]["dedup_ratio"] > 1.5
    pid = doc["points"][1]["id"]
    r = vmb("restore", "--repo", repo, "--point", pid, "--disk", "2000", "--out", "-")
    assert r.returncode == 0 and r.stdout == data
    out = tmp_path / "out.img"
    r = vmb("restore", "--repo", repo, "--point", pid, "--disk", "2000", "--out", str(out))
    assert r.returncode == 0 and out.read_bytes() == data
    assert out.stat().st_blocks * 512 < len(data)  # the zero chunk is a hole
    assert vmb("verify", "--repo", repo).returncode == 0
    assert vmb("verify", "--repo", repo, "--sample", "2").returncode == 0
    r = vmb("prune", "--repo", repo, "--keep-last", "1", "--dry-run")
    assert r.returncode == 0 and b"1 kept, 1 would be removed" in r.stdout
    assert vmb("prune", "--repo", repo, "--keep-last", "1").returncode == 0
    r = vmb("gc", "--repo", repo)
    assert r.returncode == 0 and b"freed" in r.stdout
    # damage: verify exits non-zero and names the chunk
    victim = stored_ids(Repository.open(repo))[0]
    damage_chunk(Repository.open(repo), victim)
    r = vmb("verify", "--repo", repo)
    assert r.returncode == 1 and victim.hex().encode() in r.stdout


def test_cli_bad_input(tmp_path: Path) -> None:
    repo = str(tmp_path / "repo")
    r = vmb("verify", "--repo", repo)
    assert r.returncode == 1 and b"not a vmbackup repository" in r.stderr
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    assert vmb("repo", "init", repo, "--encrypt", "--passphrase-file", str(pw)).returncode == 0
    r = vmb("repo", "list", "--repo", repo, env={"VMBACKUP_PASSPHRASE": "nope"})
    assert r.returncode == 1 and b"wrong passphrase" in r.stderr
    r = vmb("repo", "list", "--repo", repo, "--passphrase-file", str(pw))
    assert r.returncode == 0
    r = vmb(
        "restore",
        "--repo",
        repo,
        "--point",
        "../../etc",
        "--disk",
        "1",
        "--out",
        "-",
        env={"VMBACKUP_PASSPHRASE": "s3cret"},
    )
    assert r.returncode == 1 and b"not a point id" in r.stderr
    r = vmb("prune", "--repo", repo, env={"VMBACKUP_PASSPHRASE": "s3cret"})
    assert r.returncode == 1 and b"no keep rule given" in r.stderr
    r = vmb("repo", "init", str(tmp_path / "x"), "--chunk-size", "1000")
    assert r.returncode == 1 and b"chunk size" in r.stderr
    r = vmb("repo", "init", str(tmp_path / "y"), "--compression-level", "-11")
    assert r.returncode == 1 and b"compression level -11 outside -10..22" in r.stderr
    assert not (tmp_path / "y" / "config").exists()
    assert CS == 256 * 1024


def test_a_fast_level_repository_round_trips(tmp_path: Path) -> None:
    """zstd's fast levels (negative) write ordinary zstd frames: restore and verify read
    them like any other, and the compressible chunks are stored smaller than raw."""
    repo = str(tmp_path / "repo")
    img = tmp_path / "d.img"
    data = make_image(img, "tttrz")
    r = vmb("repo", "init", repo, "--chunk-size", "256K", "--compression-level", "-5", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["result"]["compression_level"] == -5
    r = vmb("repo", "import-disk", "--repo", repo, "--vm", "web", "--disk", "2000", str(img))
    assert r.returncode == 0, r.stderr
    doc = json.loads(vmb("repo", "list", "--repo", repo, "--json").stdout)["result"]
    assert doc["totals"]["stored_bytes"] < len(data) // 2, doc["totals"]
    pid = doc["points"][0]["id"]
    r = vmb("restore", "--repo", repo, "--point", pid, "--disk", "2000", "--out", "-")
    assert r.returncode == 0 and r.stdout == data
    assert vmb("verify", "--repo", repo).returncode == 0
