"""A damaged chunk, end to end: verify quarantines it, the next backup (coordinator,
proxies, writers, all real processes on the lab) stores a good copy, and both the new
point and the old one restore bit-exact; `repo repair` then finds nothing left."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from lab import Lab, LabSpec
from lab.checks import disk_digests
from lab.stack import Stack, StackSpec
from repository.repository import Repository
from repository.verify import verify
from tests.repository.conftest import damage_chunk

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MiB = 1 << 20


def test_damaged_chunk_is_healed_by_the_next_backup(tmp_path: Path) -> None:
    spec = LabSpec(clusters=1, hosts_per_cluster=1, vms_per_host=2, disk_sizes=[20 * MiB + 333])
    with Lab.start(spec) as lab:
        lab.fill_disks(seed=23, template_vms=1)
        # open packs are verified once sealed: the writers seal theirs soon after the backup
        idle = {"VMBACKUP_WRITER__PACK_IDLE_SEAL": "0.5"}
        with Stack(lab, tmp_path, StackSpec(n_shards=2, env=idle)) as stack:
            expected = disk_digests(lab)
            first = stack.backup()
            assert first.returncode == 0, first.report
            vm = first.report["vms"][0]
            key = vm["disks"][0]["key"]
            old = vm["point_id"]
            repo = Repository.open(stack.repo)
            ids = [cid for _, cid in repo.load_map(old, key).iter_ids()]
            victim = ids[len(ids) // 2]
            deadline = time.monotonic() + 60
            while list((stack.repo / "packs" / "open").glob("*.pack")):
                assert time.monotonic() < deadline, "the writers kept their packs open"
                time.sleep(0.2)
            damage_chunk(repo, victim, 200)

            rep = verify(repo)
            assert rep.quarantined == [victim.hex()]
            assert any(p.kind == "damaged-point" and old in p.obj for p in rep.problems)
            out = tmp_path / "old.img"
            args = ("--point", old, "--disk", str(key), "--out", str(out))
            r = stack.run("restore", "--repo", str(stack.repo), *args)
            assert r.returncode == 1 and not out.exists()
            assert victim.hex() in r.stderr and "quarantined" in r.stderr

            second = stack.backup()  # nothing changed in the guests
            assert second.returncode == 0, second.report
            by_vm = {v["moref"]: v for v in second.report["vms"]}
            healer = by_vm[vm["moref"]]
            assert healer["disks"][0]["mode"] == "full", healer
            assert "quarantined" in healer["disks"][0]["reason"]
            for run in (first, second):
                for v in run.report["vms"]:
                    for d in v["disks"]:
                        got = stack.restore_digest(v["point_id"], d["key"])
                        assert got == expected[(v["moref"], d["key"])]  # old point: healed
            assert "OK" in stack.verify()
            doc = json.loads(stack.vmbackup("repo", "repair", "--repo", str(stack.repo), "--json"))[
                "result"
            ]
            assert doc["ok"] and doc["healed"] == [victim.hex()]
            assert doc["points_needing_data"] == []
