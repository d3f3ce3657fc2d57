"""Planning's CPU without the lab: bench/coordinator_scale.py's planning loop (previous
point per disk from a real repository, the incremental decision, 500 changed areas cut
into tasks) on fabricated VMs, timed as process CPU, which a loaded machine distorts far
less than wall time.

Runs on trees from before the redesign too (their ``commit_point`` took a dict), so that
before/after pairs can be measured with one script:

    .venv/bin/python -m bench.planning_cpu [--vms 5000] [--runs 3]
    PYTHONPATH=<other tree> .venv/bin/python bench/planning_cpu.py   # that tree's code
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from coordinator import planner
from coordinator.previous_points import History
from repository.repository import Repository

MiB = 2**20
GiB = 2**30
CAPACITY = 64 * GiB
DISK_KEY = 2000


def _seed_request(vm_uuid: str) -> Any:
    """One complete point of one 64 GiB disk, in the tree's own commit API."""
    try:
        from repository.point_commit import DiskChanges, PointCommit
    except ImportError:  # before #21: a dict shaped like the CommitRequest
        return {
            "job_id": "seed",
            "vcenter": "lab",
            "vm_uuid": vm_uuid,
            "vm_moref": "vm-1",
            "vm_name": vm_uuid,
            "vm_config": b"{}",
            "status": "complete",
            "snapshot_time": 1.0,
            "failed_disks": [],
            "disks": [
                {
                    "key": DISK_KEY,
                    "capacity": CAPACITY,
                    "change_id": "52 aa/1",
                    "base_point_id": "",
                    "entries": [],
                    "info": {},
                }
            ],
        }
    return PointCommit(
        job_id="seed",
        vcenter="lab",
        vm_uuid=vm_uuid,
        vm_moref="vm-1",
        vm_name=vm_uuid,
        vm_config=b"{}",
        status="complete",
        snapshot_time=1.0,
        disks=[DiskChanges(key=DISK_KEY, capacity=CAPACITY, change_id="52 aa/1")],
    )


def plan_all(repo_path: Path, vms: list[str], areas: int) -> tuple[int, float, float]:
    """(tasks, CPU s looking up previous points, CPU s cutting ranges) for every VM."""
    rng = random.Random(1)
    hist = History.open(repo_path)
    tasks, t_prev, t_cut = 0, 0.0, 0.0
    for vm in vms:
        a = time.process_time()
        dec = planner.decide(hist.previous(vm, DISK_KEY), "52 aa/2", CAPACITY)
        b = time.process_time()
        starts = sorted(rng.randrange(0, CAPACITY - MiB) for _ in range(areas))
        plan = planner.DiskPlan(DISK_KEY, CAPACITY, dec, "52 aa/2")
        planner.plan_ranges(
            plan,
            [(s, 64 * 1024) for s in starts],
            chunk_size=hist.chunk_size,
            max_bytes=64 * MiB,
            job_id="bench",
            vm_uuid=vm,
        )
        tasks += len(plan.tasks)
        t_prev += b - a
        t_cut += time.process_time() - b
    return tasks, t_prev, t_cut


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--vms", type=int, default=5000)
    ap.add_argument("--areas", type=int, default=500, help="changed areas per disk")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="planning-cpu-") as tmp:
        repo = Repository.init(Path(tmp) / "repo", chunk_size=4 * MiB)
        vms = [str(uuid.UUID(int=i + 1)) for i in range(args.vms)]
        for vm in vms:
            repo.commit_point(_seed_request(vm))
        for run in range(1, args.runs + 1):
            t0 = time.process_time()
            tasks, t_prev, t_cut = plan_all(repo.path, vms, args.areas)
            print(
                f"run {run}: {time.process_time() - t0:.2f} CPU s for {args.vms} disks"
                f" (previous points {t_prev:.2f}, ranges {t_cut:.2f}), {tasks} tasks"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
