"""A policy's second copy with the real services: `vmbackup backup` of a policy with
``[policies.copy]`` copies its new points into an encrypted second repository after the
job, the report says what went, a second job copies only its own points, another
policy's points stay out, and the copies restore bit-exact against the guests; a target
that does not open is in the report, and a bucket (s3://) is a target too."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import Lab, LabSpec
from lab.stack import Stack, StackSpec
from repository.repository import Repository
from repository.restore import restore_disk
from repository.s3_storage import S3Storage
from repository.verify import verify
from tests.coordinator.conftest import MiB
from tests.rgw import Rgw

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    spec = LabSpec(clusters=1, hosts_per_cluster=1, vms_per_host=2, disk_sizes=[8 * MiB])
    with Lab.start(spec) as lab:
        yield lab


def test_a_policy_copies_its_points_after_each_job(lab: Lab, tmp_path: Path) -> None:
    names = sorted(v["name"] for v in lab.vms())
    site_b = tmp_path / "site-b"
    pw = tmp_path / "site-b.pass"
    pw.write_text("second site\n")
    Repository.init(site_b, chunk_size=MiB, passphrase="second site", kdf_n=1024).close()
    policies = f"""
[[policies]]
name = "gold"
names = {json.dumps(names)}
[policies.copy]
to = {json.dumps(str(site_b))}
passphrase = {{file = {json.dumps(str(pw))}}}

[[policies]]
name = "other"
names = {json.dumps(names[:1])}
"""
    spec = StackSpec(
        writers=1, proxies=1, n_shards=2, transport="file", chunk_size=MiB, extra_config=policies
    )
    with Stack(lab, tmp_path / "stack", spec) as stack:

        def backup(policy: str) -> dict[str, Any]:
            for i, name in enumerate(names):  # something new on each disk
                lab.write_guest_data(name, 2000, (i % 8) * MiB + 7, os.urandom(4096))
            run = stack.backup(policy, timeout=300)
            assert run.returncode == 0, run.log_path.read_text()[-6000:]
            return run.report

        first = backup("gold")
        assert first["copy"]["to"] == str(site_b) and first["copy"]["error"] == ""
        assert (first["copy"]["copied"], first["copy"]["present"]) == (2, 0)
        assert first["copy"]["chunks_sent"] > 0 and first["copy"]["failed"] == []
        other = backup("other")
        assert other["copy"] is None  # a policy without [policies.copy]
        second = backup("gold")
        assert (second["copy"]["copied"], second["copy"]["present"]) == (2, 2)
        # only what the second job changed went over: one 4 KiB write in one chunk per disk
        assert first["copy"]["chunks_sent"] >= 2 and 0 < second["copy"]["chunks_sent"] <= 2
        text = (stack.reports / f"{second['job_id']}.txt").read_text()
        assert f"copy to {site_b}: 2 point(s) copied, 2 there already" in text

        dst = Repository.open(site_b, "second site")
        gold = {v["point_id"] for r in (first, second) for v in r["vms"]}
        assert {p.id for p in dst.points()} == gold  # never the other policy's point
        for v in second["vms"]:
            buf = io.BytesIO()
            restore_disk(dst, v["point_id"], 2000, buf)
            assert buf.getvalue() == lab.read_guest_data(v["moref"], 2000, 0, 8 * MiB), v["name"]
        assert verify(dst).ok and dst.running_jobs() == []


def test_a_target_that_does_not_open_is_in_the_report_not_the_status_and_s3_is_a_target(
    lab: Lab, tmp_path: Path, rgw: Rgw, s3_storage: S3Storage
) -> None:
    names = sorted(v["name"] for v in lab.vms())
    missing = tmp_path / "nowhere"
    s3_url = f"s3://{s3_storage.loc.bucket}/site-b"
    s3_cfg = tmp_path / "s3.toml"
    s3_cfg.write_text(
        f'endpoint = "{rgw.endpoint}"\nregion = "{rgw.info.region}"\n'
        f'credentials_file = "{rgw.credentials_file}"\n'
    )
    Repository.init(s3_url, chunk_size=MiB, s3_config=s3_cfg, cache_dir=tmp_path / "c").close()
    policies = f"""
[[policies]]
name = "gold"
names = {json.dumps(names[:1])}
[policies.copy]
to = {json.dumps(str(missing))}

[[policies]]
name = "silver"
names = {json.dumps(names[:1])}
[policies.copy]
to = {json.dumps(s3_url)}
s3_config = {json.dumps(str(s3_cfg))}
cache_dir = {json.dumps(str(tmp_path / "c"))}
"""
    spec = StackSpec(
        writers=1, proxies=1, n_shards=2, transport="file", chunk_size=MiB, extra_config=policies
    )
    with Stack(lab, tmp_path / "stack", spec) as stack:
        run = stack.backup("gold", timeout=300)
        assert run.returncode == 0, run.log_path.read_text()[-6000:]
        err = run.report["copy"]["error"]
        assert err.startswith("target repository:") and "not a vmbackup repository" in err
        assert not missing.exists()
        # a bucket as the target: the point goes there and restores bit-exact from it
        run = stack.backup("silver", timeout=300)
        assert run.returncode == 0, run.log_path.read_text()[-6000:]
        assert run.report["copy"]["error"] == "" and run.report["copy"]["copied"] == 1
        dst = Repository.open(s3_url, s3_config=s3_cfg, cache_dir=tmp_path / "look")
        (v,) = run.report["vms"]
        buf = io.BytesIO()
        restore_disk(dst, v["point_id"], 2000, buf)
        assert buf.getvalue() == lab.read_guest_data(v["moref"], 2000, 0, 8 * MiB)
