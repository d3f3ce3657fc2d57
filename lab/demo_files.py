"""The demo's file-restore step: a guest with real filesystems, backed up twice, and
its files restored from the incremental point (and the point before) with `files get`,
compared with what the guest wrote: content, size, modification time.

One call from lab/demo.py once its own backups are checked: this step writes the
guest's disk (lab/guest_fs.py, through the lab's guest write path, so CBT sees it), runs
two more backups of the "all" policy (only this disk changed: incrementals elsewhere
carry nothing) and reads the files back through the export, nbdfuse and mounts.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from lab import Lab
from lab.guest_fs import disk_bytes, guest_partitions, write_guest_fs
from lab.stack import Stack, StackError

TOOLS = ("sfdisk", "mkfs.ext4", "mkfs.vfat", "mcopy", "mkfs.ntfs", "ntfs-3g", "nbdfuse")


def _pick_disk(lab: Lab) -> tuple[str, int, Path] | None:
    need = disk_bytes(guest_partitions(0, 0))
    for vm in lab.vms():
        for d in vm["disks"]:
            if int(d["capacity"]) >= need:
                return vm["name"], int(d["key"]), lab.local_path(d["file"])
    return None


def _point_of(report: dict[str, Any], vm: str) -> str:
    for v in report.get("vms", []):
        if v.get("name") == vm and v.get("point_id"):
            return str(v["point_id"])
    raise StackError(f"the backup has no point of {vm}")


def _compare(got: Path, generation: int, seed: int) -> list[str]:
    """What differs between the restored tree of each partition and the guest's files."""
    bad = []
    for number, part in enumerate(guest_partitions(seed, generation), start=1):
        for f in part.files:
            p = got / f"p{number}" / f.path.lstrip("/")
            if f.link:
                if not p.is_symlink() or os.readlink(p) != f.link:
                    bad.append(f"p{number}{f.path}: not the link to {f.link}")
                continue
            if not p.is_file() or p.read_bytes() != f.data:
                bad.append(f"p{number}{f.path}: content differs")
            elif os.lstat(p).st_mtime != f.mtime:
                bad.append(f"p{number}{f.path}: mtime {os.lstat(p).st_mtime} != {f.mtime}")
    return bad


def file_restore(stack: Stack, lab: Lab, seed: int) -> list[str]:
    """Run the step; the failures (none when every file came back as written)."""
    print("file-level restore (vmbackup files):")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if os.geteuid() != 0 or missing:
        why = "needs root (loop devices, mounts)" if os.geteuid() != 0 else f"no {missing}"
        print(f"  skipped: {why}")
        return []
    picked = _pick_disk(lab)
    if picked is None:
        return ["files: no lab disk is large enough for the guest filesystems"]
    vm, key, flat = picked
    points = []
    for generation, label in ((0, "guest filesystems written"), (1, "a few files changed")):
        n = write_guest_fs(flat, seed, generation)
        run = stack.backup("all")
        if run.returncode != 0:
            return [f"files: the backup after generation {generation} exited {run.returncode}"]
        points.append(_point_of(run.report, vm))
        mode = next(
            d.get("mode")
            for v in run.report["vms"]
            if v["name"] == vm
            for d in v["disks"]
            if d["key"] == key
        )
        print(f"  {vm} disk {key}: {label} ({n >> 10} KiB), backed up ({mode}): {points[-1]}")
    listing = json.loads(
        stack.vmbackup(
            "files",
            "ls",
            "--repo",
            str(stack.repo),
            "--point",
            points[1],
            "--disk",
            str(key),
            "--json",
        )
    )["result"]
    print(
        "  partitions: "
        + ", ".join(f"{p['number']} {p['fstype']} {p['label']}" for p in listing["partitions"])
    )
    bad: list[str] = []
    out = stack.workdir / "files-restored"
    for generation, point in enumerate(points):
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        for p in listing["partitions"]:
            doc = json.loads(
                stack.vmbackup(
                    "files",
                    "get",
                    "--repo",
                    str(stack.repo),
                    "--point",
                    point,
                    "--disk",
                    str(key),
                    "--partition",
                    str(p["number"]),
                    "/",
                    "--out",
                    str(out / f"p{p['number']}"),
                    "--json",
                )
            )["result"]
            print(
                f"  {'after' if generation else 'before'} the change, {point} p{p['number']}"
                f" ({doc['engine']}): {doc['files']} files, {doc['bytes']} bytes"
            )
        diff = _compare(out, generation, seed)
        bad += [f"files from {point}: {d}" for d in diff]
    want = next(f for f in guest_partitions(seed, 1)[0].files if f.path.endswith("notes.txt"))
    got = out / "p1" / want.path.lstrip("/")  # the incremental's copy, still there
    same = got.read_bytes() == want.data and os.lstat(got).st_mtime == want.mtime
    print(
        f"  {want.path} from the incremental point: {got.stat().st_size} bytes, mtime"
        f" {int(got.stat().st_mtime)}: equal to what the guest wrote: {same}"
    )
    shutil.rmtree(out, ignore_errors=True)
    return bad
