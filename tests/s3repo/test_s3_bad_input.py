"""Bad input on S3 through a whole command (`vmbackup repo copy` into or from a repository
on the lab's real RGW; the storage's own answers are tests/repository/test_s3_storage.py):
wrong secret key, a missing bucket, an endpoint that never answers, TLS without the CA,
a bucket over its quota. Each exits 1 with a message naming the side and what was wrong,
writes nothing on a failed open, and leaves only whole points behind a failed write; the
same command finishes once the cause is gone."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from common.job_ids import new_job_id
from coordinator.copy_after_job import copy_after_job
from coordinator.copy_settings import CopySettings
from coordinator.settings import PolicySettings
from lab.ceph_rgw import write_credentials
from repository.import_disk import import_disk
from repository.repository import Repository
from tests.repository.test_repo_copy import assert_same_points, new_repo
from tests.repository.test_repo_copy_cli import assert_whole
from tests.rgw import Rgw
from tests.s3repo.conftest import CHUNK, S3Repo
from tests.s3repo.test_s3_copy import s3_init
from vmbackup.cli import main


def s3_config(path: Path, rgw: Rgw, **keys: str | int | float) -> Path:
    """An S3 config for the lab's gateway, ``keys`` replacing or adding its settings."""
    doc: dict[str, str | int | float] = {
        "endpoint": rgw.endpoint,
        "region": rgw.info.region,
        "credentials_file": str(rgw.credentials_file),
        "max_attempts": 1,
    } | keys
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in doc.items()))
    return path


def names(r: S3Repo) -> list[str]:
    return [o.name for o in r.bucket.list("repo")]


def copy(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["repo", "copy", *argv, "--json"])
    doc = json.loads(capsys.readouterr().out)
    return code, "" if doc["ok"] else doc["error"]["message"]


def test_open_errors_name_the_side_and_the_cause_and_write_nothing(
    s3repo: S3Repo, rgw: Rgw, tmp_path: Path, silent_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    new_repo(tmp_path / "a").close()
    s3_init(s3repo.url, s3repo.config, s3repo.cache()).close()
    written = names(s3repo)
    creds = tmp_path / "bad-creds"
    real = s3repo.bucket.loc.credentials()
    write_credentials(creds, real.access_key, "not-the-secret-" + "x" * 25)
    port = rgw.info.tls_endpoint.rsplit(":", 1)[1]
    ep = rgw.endpoint
    cases = [
        (s3_config(tmp_path / "secret.toml", rgw, credentials_file=str(creds)), s3repo.url,
         f"access denied by {ep} (SignatureDoesNotMatch); check the S3 credentials"),
        (s3repo.config, "s3://no-such-bucket-s3copy/repo",
         f"bucket no-such-bucket-s3copy does not exist at {ep}"),
        (s3_config(tmp_path / "silent.toml", rgw, endpoint=f"http://127.0.0.1:{silent_port}",
                   read_timeout_seconds=0.5),
         s3repo.url, f"http://127.0.0.1:{silent_port} did not answer within 10/0.5 s"),
        (s3_config(tmp_path / "tls.toml", rgw, endpoint=rgw.info.tls_endpoint), s3repo.url,
         f"TLS with https://127.0.0.1:{port} failed"),
    ]  # fmt: skip
    for cfg, url, message in cases:
        code, error = copy(
            capsys, "--from", str(tmp_path / "a"), "--to", url, "--to-s3-config", str(cfg)
        )
        assert code == 1 and error.startswith("target (--to) repository: "), error
        assert message in error, error
        assert real.secret_key not in error and "not-the-secret" not in error
        assert names(s3repo) == written  # nothing written by a copy that did not open
    assert "certificate verify failed" in error
    # the source's side says so too
    code, error = copy(
        capsys, "--from", s3repo.url, "--from-s3-config", str(tmp_path / "secret.toml"),
        "--to", str(tmp_path / "a"),
    )  # fmt: skip
    assert (
        code == 1 and error.startswith("source (--from) repository: ") and "SignatureDoes" in error
    )


def full_target(s3repo: S3Repo, rgw: Rgw, tmp_path: Path) -> Repository:
    """A source of three VMs' points (policy gold), 2 MiB each (incompressible), and an empty S3
    repository whose bucket's quota has room for one; the source."""
    src = new_repo(tmp_path / "a")
    for vm in ("web", "db", "app"):
        (tmp_path / "d.img").write_bytes(os.urandom(8 * CHUNK))
        import_disk(src, vm, 2000, tmp_path / "d.img", job_id=new_job_id("gold"))
    s3_init(s3repo.url, s3repo.config, s3repo.cache()).close()
    rgw.set_bucket_quota(s3repo.bucket.loc.bucket, 3 << 20)
    return src


def test_a_bucket_over_its_quota_stops_the_copy_with_whole_points_only(
    s3repo: S3Repo, rgw: Rgw, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = full_target(s3repo, rgw, tmp_path)
    argv = ["--from", str(tmp_path / "a"), "--to", s3repo.url, "--s3-config", str(s3repo.config),
            "--to-cache-dir", str(s3repo.cache())]  # fmt: skip
    code, error = copy(capsys, *argv)
    assert code == 1 and "no space left on device while writing" in error, error
    assert "QuotaExceeded" in error and rgw.endpoint in error
    look = Repository.open(s3repo.url, s3_config=s3repo.config, cache_dir=s3repo.cache("look"))
    assert 0 < len(assert_whole(look)) < 3  # stopped mid-way; what is there is whole
    rgw.admin("quota", "disable", "--quota-scope=bucket", f"--bucket={s3repo.bucket.loc.bucket}")
    code, error = copy(capsys, *argv)  # the same command, the same cache: it finishes
    assert code == 0, error
    done = Repository.open(s3repo.url, s3_config=s3repo.config, cache_dir=s3repo.cache("end"))
    assert assert_same_points(src, done, tmp_path) == 3


def test_the_coordinators_copy_into_a_full_bucket_is_in_its_report(
    s3repo: S3Repo, rgw: Rgw, tmp_path: Path
) -> None:
    """[policies.copy] into a bucket over its quota: the job's copy report says so (the
    target's close, which uploads its open packs, fails as the copy did; it is caught)."""
    src = full_target(s3repo, rgw, tmp_path)
    copy = CopySettings(to=s3repo.url, s3_config=str(s3repo.config), cache_dir=str(s3repo.cache()))
    policy = PolicySettings(name="gold", copy=copy)
    # the real runtime needs vCenter and the broker; copy_after_job reads only the source
    # repository of it (real, on RGW); tests/coordinator/test_copy_lab.py runs the real one
    runtime = SimpleNamespace(history=SimpleNamespace(repo=src))  # all the copy reads of it
    out = copy_after_job(runtime, policy)  # type: ignore[arg-type]
    assert out is not None and "no space left on device" in out.error, out
    assert "QuotaExceeded" in out.error and out.copied == 0
