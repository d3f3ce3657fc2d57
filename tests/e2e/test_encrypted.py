"""An encrypted repository through the whole pipeline: keyed chunk ids at the proxies,
AES-256-GCM at the writers, chunk streams in TLS (the set-up for a network nobody trusts),
full then incremental, restores bit-exact."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest

from lab import Lab, LabSpec
from lab.checks import disk_digests, lab_snapshots
from lab.stack import Stack, StackSpec
from repository.repository import Repository
from tests.repository.conftest import stored_ids

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MiB = 1 << 20


def _log_events(logs: Path) -> list[dict[str, Any]]:
    out = []
    for path in logs.glob("*.log"):
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    out.append(event)
    return out


def test_encrypted_repository_end_to_end(tmp_path: Path) -> None:
    spec = LabSpec(clusters=1, hosts_per_cluster=1, vms_per_host=2, disk_sizes=[24 * MiB + 777])
    with Lab.start(spec) as lab:
        lab.fill_disks(seed=5, template_vms=1)
        spec_ = StackSpec(n_shards=4, encrypt=True, stream_tls=True)
        with Stack(lab, tmp_path, spec_) as stack:
            full_expected = disk_digests(lab)
            full = stack.backup()
            assert full.returncode == 0, full.report
            vm = lab.vms()[0]
            lab.write_guest_data(vm["moref"], vm["disks"][0]["key"], 3 * MiB, b"\x5a" * 300_000)
            incr_expected = disk_digests(lab)
            incr = stack.backup()
            assert incr.returncode == 0, incr.report
            assert {d["mode"] for v in incr.report["vms"] for d in v["disks"]} == {"incremental"}
            for run, expected in ((full, full_expected), (incr, incr_expected)):
                for v in run.report["vms"]:
                    for d in v["disks"]:
                        got = stack.restore_digest(v["point_id"], d["key"])
                        assert got == expected[(v["moref"], d["key"])]
            assert "OK" in stack.verify()
            # Ids are keyed: a chunk the guest wrote is stored under its keyed id, and its
            # plain BLAKE3 names no file.
            from common.chunk import chunk_id

            repo = Repository.open(stack.repo, stack.passphrase_file.read_text())
            names = {cid.hex() for cid in stored_ids(repo)}
            assert len(names) > 10
            data = lab.read_guest_data(vm["moref"], vm["disks"][0]["key"], 3 * MiB, MiB)
            key = bytes.fromhex(stack.id_key_file.read_text())
            assert chunk_id(data, key).hex() in names
            assert chunk_id(data).hex() not in names
            # The guest's bytes appear in no pack (encrypted, not just compressed).
            needle = b"\x5a" * 4096
            for f in [f for f in stack.repo.rglob("*") if f.is_file()]:
                assert needle not in f.read_bytes()
            # The chunks went over the writers' streams, in TLS.
            events = _log_events(stack.logs)
            opened = [e for e in events if e.get("event") == "chunk_stream_opened"]
            assert any(e.get("tls") is True for e in opened)  # a proxy's side
            assert not [e for e in events if e.get("event") == "chunk_stream_unavailable"]
        assert lab_snapshots(lab) == []
