"""`vmbackup repo copy` as a process: SIGKILLed at random moments and run again until it
finishes, then every point of the target restores bit-exact and verify finds it clean;
its --json document and its errors (wrong passphrase, missing target, chunk sizes)."""

from __future__ import annotations

import base64
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from repository.import_disk import import_disk
from repository.points import Point
from repository.repository import Repository
from repository.verify import verify
from tests.repository.conftest import CS
from tests.repository.test_cli import vmb
from tests.repository.test_repo_copy import assert_same_points, fill, new_repo

KILLS = 6


@pytest.fixture
def source(tmp_path: Path) -> Path:
    src = new_repo(tmp_path / "a")
    fill(src, tmp_path, vms=("web", "db"), points=2)
    return tmp_path / "a"


def copy_cmd(src: Path, dst: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "vmbackup",
        "repo",
        "copy",
        "--from",
        str(src),
        "--to",
        str(dst),
        *extra,
    ]


def run_and_kill(cmd: list[str], i: int, kill: random.Random, latest: float) -> int:
    """Run ``cmd`` and SIGKILL it: on odd ``i`` at any moment up to ``latest`` seconds
    (starting, asking, sending, committing), else a moment after it said it committed a
    point. Its exit status (-SIGKILL unless it finished first)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    if i % 2:
        time.sleep(kill.uniform(0.3, latest))
    else:
        for line in proc.stderr:
            if " sent" in line:
                break
        time.sleep(kill.uniform(0.0, 0.3))
    proc.send_signal(signal.SIGKILL)
    return proc.wait(timeout=60)


def assert_whole(repo: Repository) -> list[Point]:
    """The points ``repo`` shows, each whole: every map loads and names stored chunks."""
    visible = repo.points()
    for p in visible:
        for d in p.disks:
            ids = [c for _, c in repo.load_map(p, d.key).iter_ids()]
            assert all(repo.has_chunks(ids)), f"{p.id} names a chunk the kill lost"
    return visible


@pytest.mark.slow
def test_sigkill_at_random_moments_then_copy_again(tmp_path: Path) -> None:
    # enough chunks (unique, compressible: zstd and AES run) that a copy into an encrypted
    # pack repository takes a few seconds
    src = new_repo(tmp_path / "a")
    rnd = random.Random(5)

    def chunks(n: int) -> bytes:
        return b"".join(base64.b64encode(rnd.randbytes(CS * 3 // 4)) for _ in range(n))

    for vm in ("web", "db", "app", "mail"):
        img = tmp_path / f"{vm}.img"
        img.write_bytes(chunks(40))
        for n in range(3):
            if n:
                img.write_bytes(img.read_bytes()[: 30 * CS] + chunks(10))
            import_disk(src, vm, 2000, img, snapshot_time=time.time() - (3 - n) * 3600)
    total = len(src.points())
    dst_path = tmp_path / "b"
    new_repo(dst_path, packs=True, passphrase="site b").close()
    pw = tmp_path / "pw"
    pw.write_text("site b\n")
    cmd = copy_cmd(tmp_path / "a", dst_path, "--to-passphrase-file", str(pw))
    kill = random.Random(99)
    killed_midway = 0
    for i in range(KILLS):
        returncode = run_and_kill(cmd, i, kill, 1.5)
        dst = Repository.open(dst_path, "site b")
        visible = assert_whole(dst)
        if returncode == -signal.SIGKILL and 0 < len(visible) < total:
            killed_midway += 1  # between two points at least once
        dst.close()
    assert killed_midway, "every copy finished before its kill: nothing was tested"
    done = subprocess.run([*cmd, "--json"], capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)["result"]
    assert doc["copied"] + doc["present"] == total and doc["failed"] == 0
    dst = Repository.open(dst_path, "site b")
    assert assert_same_points(Repository.open(tmp_path / "a"), dst, tmp_path) == total
    report = verify(dst)
    assert report.ok, report.problems
    assert dst.running_jobs() == []  # the killed runs' marker went with the last run
    again = json.loads(subprocess.run([*cmd, "--json"], capture_output=True, timeout=600).stdout)
    assert again["result"]["stats"]["chunks_sent"] == 0 and again["result"]["copied"] == 0


def test_json_document_and_text(tmp_path: Path, source: Path) -> None:
    new_repo(tmp_path / "b", packs=True)
    r = vmb(
        "repo", "copy", "--from", str(source), "--to", str(tmp_path / "b"), "--vm", "web", "--json"
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["ok"] and doc["command"] == "repo copy" and doc["exit"] == 0
    res = doc["result"]
    assert res["copied"] == 2 and res["present"] == 0 and res["failed"] == 0
    assert {p["vm_name"] for p in res["points"]} == {"web"}
    assert (
        res["stats"]["chunks_sent"] > 0
        and res["stats"]["blobs_as_stored"] == res["stats"]["chunks_sent"]
    )
    r = vmb("repo", "copy", "--from", str(source), "--to", str(tmp_path / "b"), "--vm", "nosuch")
    assert r.returncode == 0 and b"--vm nosuch: no such VM in the source" in r.stderr
    r = vmb("repo", "copy", "--from", str(source), "--to", str(tmp_path / "b"))
    out = r.stdout.decode()
    assert r.returncode == 0 and "2 copied, 2 already in the target, 0 failed" in out
    assert out.count("  present ") == 2 and out.count("  copied  ") == 2


def test_wrong_passphrase_of_the_target(tmp_path: Path, source: Path) -> None:
    new_repo(tmp_path / "b", passphrase="right")
    pw = tmp_path / "pw"
    pw.write_text("wrong\n")
    r = vmb(
        "repo",
        "copy",
        "--from",
        str(source),
        "--to",
        str(tmp_path / "b"),
        "--to-passphrase-file",
        str(pw),
        "--json",
    )
    doc = json.loads(r.stdout)
    assert r.returncode == 1 and doc["error"]["cause"] == "repository"
    assert doc["error"]["message"].startswith("target (--to) repository: wrong passphrase")


def test_missing_target_and_missing_source(tmp_path: Path, source: Path) -> None:
    r = vmb("repo", "copy", "--from", str(source), "--to", str(tmp_path / "nope"))
    err = r.stderr.decode()
    assert (
        r.returncode == 1
        and "target (--to) repository:" in err
        and "not a vmbackup repository" in err
    )
    assert not (tmp_path / "nope").exists()
    r = vmb("repo", "copy", "--from", str(tmp_path / "gone"), "--to", str(source))
    assert r.returncode == 1 and b"source (--from) repository:" in r.stderr


def test_chunk_size_mismatch(tmp_path: Path, source: Path) -> None:
    Repository.init(tmp_path / "b", chunk_size=4 * CS)
    r = vmb("repo", "copy", "--from", str(source), "--to", str(tmp_path / "b"))
    assert r.returncode == 1 and b"chunk sizes differ" in r.stderr
    assert Repository.open(tmp_path / "b").points() == []


def test_a_point_damaged_in_the_source_exits_1_naming_it(tmp_path: Path, source: Path) -> None:
    src = Repository.open(source)
    p = src.points()[-1]
    cid = next(c for _, c in src.load_map(p, 2000).iter_ids())
    (src.chunks.path_of(cid)).write_bytes(b"garbage " * 100)  # type: ignore[union-attr]
    new_repo(tmp_path / "b")
    r = vmb("repo", "copy", "--from", str(source), "--to", str(tmp_path / "b"), "--json")
    doc = json.loads(r.stdout)
    assert r.returncode == 1 and doc["error"]["cause"] == "damage"
    assert doc["result"]["failed"] >= 1 and any(p.id in x for x in doc["error"]["reasons"])


def test_usage_errors(tmp_path: Path, source: Path) -> None:
    for bad in (["--latest", "0"], ["--newer-than", "3 fortnights"]):
        r = vmb("repo", "copy", "--from", str(source), "--to", str(tmp_path), *bad)
        assert r.returncode == 2, bad
