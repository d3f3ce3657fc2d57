"""A backup through the real services into a repository on the lab's Ceph RGW: the
coordinator, two proxies and two writers (each owning half the shards, each with its own
cache directory) over RabbitMQ, against the vcsim lab; then a bit-exact restore and a
verify, both from the bucket.

Two writers is the case that matters on S3: the writer that commits a VM's point holds
only its own shards' chunks, and the point names chunks the other writer acknowledged
from its cache; the commit must wait until those are uploaded (their packs sealed idle),
never commit a point whose chunks are not all in the bucket."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lab import Lab, LabSpec
from lab.checks import disk_digests, lab_snapshots
from lab.stack import Stack, StackSpec
from repository.s3_pack_upload import INDEX, PACKS
from tests.s3repo.conftest import CHUNK, MiB, S3Repo

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]


def test_backup_by_the_services_to_s3_restores_bit_exact(tmp_path: Path, s3repo: S3Repo) -> None:
    spec = LabSpec(clusters=1, hosts_per_cluster=1, vms_per_host=2, disk_sizes=[6 * MiB + 4097])
    with Lab.start(spec) as lab:
        lab.fill_disks(seed=22, template_vms=0)
        stack_spec = StackSpec(
            n_shards=4,
            chunk_size=CHUNK,
            task_max_bytes=2 * MiB,
            s3_url=s3repo.url,
            s3_config=s3repo.config,
            # the other writer's chunks reach the bucket within a second of its last batch
            env={"VMBACKUP_WRITER__PACK_IDLE_SEAL": "1"},
        )
        with Stack(lab, tmp_path / "stack", stack_spec) as stack:
            expected = disk_digests(lab)
            run = stack.backup()
            assert run.returncode == 0, run.report
            assert len(run.report["vms"]) == 2
            # the chunks are in the bucket, not in a local repository directory
            names = [o.name for o in s3repo.bucket.list("repo")]
            assert any(n.startswith(f"repo/{PACKS}/") for n in names)
            assert any(n.startswith(f"repo/{INDEX}/") for n in names)
            assert not stack.repo.exists()
            caches = sorted(p.name for p in (tmp_path / "stack" / "cache").iterdir())
            assert {"writer-1", "writer-2"} <= set(caches), caches
            # both writers stored chunks (each owns half the shards)
            for w in ("writer-1", "writer-2"):
                assert stack.metric(w, "vmbackup_writer_chunks_total") > 0, w
                assert stack.metric(w, "vmbackup_repo_s3_errors_total") == 0, w
            for v in run.report["vms"]:
                for d in v["disks"]:
                    got = stack.restore_digest(v["point_id"], d["key"])
                    assert got == expected[(v["moref"], d["key"])], (v["name"], d["key"])
            verify = stack.run("verify", *stack.repo_args(), "--json")
            assert verify.returncode == 0, verify.stderr
            result = json.loads(verify.stdout)["result"]
            assert result["ok"] is True and result["problems"] == [], result
            assert result["chunks_checked"] > 0
        assert lab_snapshots(lab) == []
