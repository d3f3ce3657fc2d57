"""`vmbackup repo copy` into an encrypted repository on the lab's real Ceph RGW, as a
process: SIGKILLed at random moments and run again until it finishes; whatever the
bucket shows is whole, the end restores bit-exact and verifies, and a copy of the
unchanged source writes no object but its running marker. The S3 options refuse what
cannot apply."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from repository.import_disk import import_disk
from repository.repository import Repository
from repository.verify import verify
from tests.repository.test_repo_copy import assert_same_points, new_repo
from tests.repository.test_repo_copy_cli import assert_whole, run_and_kill
from tests.s3repo.conftest import CHUNK, S3Repo
from tests.s3repo.test_s3_copy import s3_init
from vmbackup.cli import main

KILLS = 3


def copy_cmd(src: str, dst: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vmbackup", "repo", "copy", "--from", src, "--to", dst, *extra]


def objects(r: S3Repo) -> set[tuple[str, int, float]]:
    """The repository's objects in the bucket but its running markers: (name, size, mtime)."""
    return {(o.name, o.size, o.mtime) for o in r.bucket.list("repo") if "/running/" not in o.name}


def test_sigkill_at_random_moments_then_copy_again_into_s3(
    s3repo: S3Repo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = new_repo(tmp_path / "a")
    rnd = random.Random(11)
    for vm in ("web", "db", "app"):
        img = tmp_path / f"{vm}.img"
        img.write_bytes(rnd.randbytes(12 * CHUNK))
        for n in range(3):
            if n:
                img.write_bytes(img.read_bytes()[: 8 * CHUNK] + rnd.randbytes(4 * CHUNK))
            import_disk(src, vm, 2000, img, snapshot_time=time.time() - (3 - n) * 3600)
    total = len(src.points())
    s3_init(s3repo.url, s3repo.config, s3repo.cache(), passphrase="site b").close()
    pw = tmp_path / "pw"
    pw.write_text("site b\n")
    cmd = copy_cmd(
        str(tmp_path / "a"), s3repo.url,
        "--s3-config", str(s3repo.config), "--to-cache-dir", str(s3repo.cache()),
        "--to-passphrase-file", str(pw),
    )  # fmt: skip
    kill = random.Random(42)
    killed_midway = 0
    for i in range(KILLS):
        returncode = run_and_kill(cmd, i, kill, 2.0)
        # another cache (what a second site's restore would use): what is visible is whole
        visible = assert_whole(
            Repository.open(s3repo.url, "site b", s3_config=s3repo.config,
                            cache_dir=s3repo.cache(f"look{i}"), read_only=True)
        )  # fmt: skip
        if returncode == -signal.SIGKILL and 0 < len(visible) < total:
            killed_midway += 1
    assert killed_midway, "every copy finished before its kill: nothing was tested"
    done = subprocess.run([*cmd, "--json"], capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)["result"]
    assert doc["copied"] + doc["present"] == total and doc["failed"] == 0
    dst = Repository.open(
        s3repo.url, "site b", s3_config=s3repo.config, cache_dir=s3repo.cache("end")
    )
    assert assert_same_points(src, dst, tmp_path) == total
    report = verify(dst)
    assert report.ok, report.problems
    assert dst.running_jobs() == []  # the killed runs' marker went with the last run
    before = objects(s3repo)
    assert main([*cmd[3:], "--json"]) == 0  # the same command, in this process
    stats = json.loads(capsys.readouterr().out)["result"]["stats"]
    assert (stats["chunks_sent"], stats["bytes_sent"]) == (0, 0)
    assert objects(s3repo) == before  # not one object written or rewritten


def test_s3_options_refuse_what_cannot_apply(
    s3repo: S3Repo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new_repo(tmp_path / "a").close()
    cfg = str(s3repo.config)
    cases = [
        (["--from", str(tmp_path / "a"), "--to", s3repo.url], "needs --to-s3-config FILE or"),
        (["--from", str(tmp_path / "a"), "--to", str(tmp_path / "b"), "--s3-config", cfg],
         "neither --from nor --to is an s3://"),
        (["--from", str(tmp_path / "a"), "--from-s3-config", cfg, "--to", s3repo.url],
         f"--from-s3-config: --from {tmp_path / 'a'} is a directory"),
        (["--from", str(tmp_path / "a"), "--from-cache-dir", "/tmp/x", "--to", s3repo.url,
          "--s3-config", cfg], "--from-cache-dir: --from"),
        (["--from", str(tmp_path / "a"), "--to", s3repo.url, "--s3-config", cfg],
         f"target (--to) repository: {s3repo.url} is not a vmbackup repository"),
    ]  # fmt: skip
    for argv, message in cases:
        code = main(["repo", "copy", *argv, "--to-cache-dir", str(s3repo.cache())])
        out = capsys.readouterr()
        assert code in (1, 2) and message in out.err + out.out, (argv, out)
