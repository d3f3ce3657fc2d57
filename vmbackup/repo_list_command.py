"""`vmbackup repo list`: restore points with their sizes, as a table or JSON."""

from __future__ import annotations

import argparse
from typing import Any

from common.command_result import CommandResult
from coordinator.vm_config import describe_point_config
from repository.points import Point
from repository.stats import RepoStats, point_data_bytes, repo_stats
from vmbackup.repo_commands import _human, _ts, open_repo


def cmd_list(args: argparse.Namespace) -> CommandResult:
    repo = open_repo(args)
    points = repo.points(args.vm_uuid)
    st = repo_stats(repo, points)
    doc = list_document(points, st)
    if args.json:
        return CommandResult(0, result=doc)
    lines = [
        f"{'POINT':26} {'VM':24} {'STATUS':8} {'SNAPSHOT (UTC)':19} {'DISKS':>5} "
        f"{'LOGICAL':>10} {'DATA':>10} {'CHANGED':>8}"
    ]
    for p in points:
        changed = sum(d.changed_chunks for d in p.disks)
        lines.append(
            f"{p.id:26} {p.vm_name[:24]:24} {p.status:8} {_ts(p.snapshot_time):19} "
            f"{len(p.disks):>5} {_human(p.logical_bytes):>10} {_human(point_data_bytes(p)):>10} "
            f"{changed:>8}"
        )
        hw = describe_point_config(p.vm_config)["hardware_summary"]
        if hw:
            lines.append(f"    {hw}")
    lines.append(
        f"\n{st.points} points, logical {_human(st.logical_bytes)}, data {_human(st.data_bytes)}; "
        f"{st.chunks} chunks, {_human(st.raw_bytes)} unique, {_human(st.stored_bytes)} stored; "
        f"dedup {st.dedup_ratio:.2f}x, compression {st.compression_ratio:.2f}x"
    )
    return CommandResult(0, text="\n".join(lines), result=doc)


def list_document(points: list[Point], st: RepoStats) -> dict[str, Any]:
    """The JSON of `repo list --json`: every point with its disks, then the totals."""
    return {
        "points": [
            {
                "id": p.id,
                "vm_uuid": p.vm_uuid,
                "vm_name": p.vm_name,
                "vm_moref": p.vm_moref,
                "vcenter": p.vcenter,
                "job_id": p.job_id,
                "status": p.status,
                "snapshot_time": p.snapshot_time,
                "logical_bytes": p.logical_bytes,
                "data_bytes": point_data_bytes(p),
                "disks": [
                    {
                        "key": d.key,
                        "capacity": d.capacity,
                        "change_id": d.change_id,
                        "base_point_id": d.base_point_id,
                        "chunks": d.chunks,
                        "zero_chunks": d.zero_chunks,
                        "changed_chunks": d.changed_chunks,
                        "info": d.info,
                    }
                    for d in p.disks
                ],
                "failed_disks": p.failed_disks,
                **describe_point_config(p.vm_config),
            }
            for p in points
        ],
        "totals": {
            "points": st.points,
            "logical_bytes": st.logical_bytes,
            "data_bytes": st.data_bytes,
            "chunks": st.chunks,
            "raw_bytes": st.raw_bytes,
            "stored_bytes": st.stored_bytes,
            "dedup_ratio": round(st.dedup_ratio, 4),
            "compression_ratio": round(st.compression_ratio, 4),
        },
    }
