"""Discovery and planning for thousands of VMs in the lab: seconds and SOAP round trips.

Discovery: one ContainerView + paged RetrievePropertiesEx (coordinator.discovery). The
baseline, measured in the same run on a sample of VMs, is the naive way: one property
read per VM. Planning: for every disk, the previous point from a real repository
(one point per VM committed first), the full/incremental decision, alignment of a
realistic changed-area list to the chunk size, and the cut into tasks with ids.

    .venv/bin/python -m bench.coordinator_scale --vms 5000
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

from bench.procmem import proc_memory
from common.config import Secret
from coordinator import planner
from coordinator.discovery import VM_PROPERTIES, discover
from coordinator.previous_points import History
from coordinator.settings import VCenterSettings
from coordinator.vcenter import Connection
from lab import Lab, LabSpec

MiB = 2**20
GiB = 2**30


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--vms", type=int, default=5000, help="VMs in the lab (multiple of 100)")
    ap.add_argument("--sample", type=int, default=200, help="VMs read one by one (baseline)")
    ap.add_argument("--page", type=int, default=1000, help="objects per inventory page")
    ap.add_argument("--areas", type=int, default=500, help="changed areas per disk")
    args = ap.parse_args(argv)

    hosts = max(1, args.vms // 100)
    spec = LabSpec(
        clusters=max(1, hosts // 10),
        hosts_per_cluster=min(10, hosts),
        vms_per_host=100 if args.vms >= 100 else args.vms,
        disks_per_vm=1,
        disk_sizes=[64 * GiB],
        local_datastores=False,
        shared_datastores=4,
    )
    print(f"starting a lab of {spec.vm_count} VMs ...", file=sys.stderr)
    t = time.monotonic()
    with Lab.start(spec, timeout=900) as lab:
        print(f"lab ready in {time.monotonic() - t:.1f} s", file=sys.stderr)
        vc = VCenterSettings(
            name="lab",
            url=lab.url,
            user=Secret(lab.user, "lab"),
            password=Secret(lab.password, "lab"),
            thumbprint=lab.thumbprint,
            page_size=args.page,
            timeout_s=600,
        )
        rss_start = proc_memory()["VmRSS"]
        with Connection(vc).connect() as conn:
            # --- discovery, paged ---
            inv = discover(conn)
            rss_discovered = proc_memory()["VmRSS"]
            n = len(inv.vms)
            # --- baseline: one read per VM, on a sample ---
            sample = inv.vms[: args.sample]
            rt0 = conn.round_trips
            t0 = time.monotonic()
            for v in sample:
                conn.get_properties(conn.moref("VirtualMachine", v.moref), VM_PROPERTIES)
            base_s = (time.monotonic() - t0) / len(sample) * n
            base_rt = (conn.round_trips - rt0) / len(sample) * n

        # --- planning against a real repository with one previous point per VM ---
        from repository.point_commit import DiskChanges, PointCommit
        from repository.repository import Repository

        with tempfile.TemporaryDirectory(prefix="coord-bench-") as tmp:
            repo = Repository.init(Path(tmp) / "repo", chunk_size=4 * MiB)
            t0 = time.monotonic()
            for v in inv.vms:
                d = v.disks[0]
                repo.commit_point(
                    PointCommit(
                        job_id="seed",
                        vcenter="lab",
                        vm_uuid=v.instance_uuid,
                        vm_moref=v.moref,
                        vm_name=v.name,
                        vm_config=b"{}",
                        status="complete",
                        snapshot_time=1.0,
                        disks=[DiskChanges(key=d.key, capacity=d.capacity, change_id="52 aa/1")],
                    )
                )
            seed_s = time.monotonic() - t0
            rng = random.Random(1)
            t0 = time.monotonic()
            hist = History.open(Path(tmp) / "repo")
            tasks = 0
            planned = 0
            for v in inv.vms:
                for d in v.backup_disks:
                    prev = hist.previous(v.instance_uuid, d.key)
                    dec = planner.decide(prev, "52 aa/2", d.capacity)
                    assert dec.mode == planner.INCREMENTAL, dec
                    starts = sorted(rng.randrange(0, d.capacity - MiB) for _ in range(args.areas))
                    areas = [(s, 64 * 1024) for s in starts]
                    plan = planner.DiskPlan(d.key, d.capacity, dec, "52 aa/2")
                    planner.plan_ranges(
                        plan,
                        areas,
                        chunk_size=hist.chunk_size,
                        max_bytes=64 * MiB,
                        job_id="bench",
                        vm_uuid=v.instance_uuid,
                    )
                    tasks += len(plan.tasks)
                    planned += plan.bytes_planned
            plan_s = time.monotonic() - t0
            rss_planned = proc_memory()["VmRSS"]

    per_k = inv.round_trips / n * 1000
    print(f"VMs: {n}, pages: {inv.pages} (page size {args.page})")
    print(
        f"discovery: {inv.seconds:.2f} s, {inv.round_trips} round trips ({per_k:.2f} per 1000 VMs)"
    )
    print(
        f"baseline (one read per VM, {len(sample)} sampled, scaled to {n}): "
        f"{base_s:.2f} s, {base_rt:.0f} round trips"
    )
    print(
        f"ratio discovery/baseline: time {inv.seconds / base_s:.3f}, "
        f"round trips {inv.round_trips / base_rt:.5f}"
    )
    print(f"repository seeded with {n} points in {seed_s:.1f} s (not part of planning)")
    print(
        f"planning: {plan_s:.2f} s for {n} disks, {args.areas} areas each -> {tasks} tasks, "
        f"{planned / GiB:.1f} GiB planned"
    )
    print(
        f"memory (this process's VmRSS): {rss_start / MiB:.0f} MiB before connecting, "
        f"{rss_discovered / MiB:.0f} MiB holding the inventory, "
        f"{rss_planned / MiB:.0f} MiB after planning; inventory "
        f"{(rss_discovered - rss_start) / MiB / n * 1000:.1f} MiB per 1000 VMs"
    )
    print(
        "| VMs | discovery s | round trips | per 1000 VMs | baseline s | baseline round trips |"
        " time ratio | round-trip ratio | planning s |"
    )
    print(
        f"| {n} | {inv.seconds:.2f} | {inv.round_trips} | {per_k:.2f} | {base_s:.1f} |"
        f" {base_rt:.0f} | {inv.seconds / base_s:.3f} | {inv.round_trips / base_rt:.5f} |"
        f" {plan_s:.2f} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
