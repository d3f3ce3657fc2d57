"""Measured child processes of the end-to-end benchmark: bytes read, failures, sizes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench.e2e_backup import timeline
from bench.e2e_tools import borg_tool, bytecode_env, dir_size, make_tools, run


def test_run_counts_bytes_the_child_read(tmp_path: Path) -> None:
    f = tmp_path / "data"
    f.write_bytes(os.urandom(3 << 20))
    m = run(["cat", str(f)], dict(os.environ))
    assert m.rchar >= 3 << 20
    assert m.output  # what the child printed is kept
    assert m.wall > 0


def test_run_failure_names_the_command_and_its_output() -> None:
    with pytest.raises(RuntimeError, match=r"sh -c echo boom; exit 3 exited 3: boom"):
        run(["sh", "-c", "echo boom; exit 3"], dict(os.environ))


def test_dir_size_counts_sizes_and_allocation(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 10000)
    sparse = tmp_path / "sub" / "b"
    sparse.parent.mkdir()
    with open(sparse, "wb") as f:
        f.truncate(1 << 20)
    size, used = dir_size(tmp_path)
    assert size == 10000 + (1 << 20)
    assert 10000 <= used < (1 << 20)


def test_timeline_splits_vm_time_at_the_snapshot(tmp_path: Path) -> None:
    log = tmp_path / "coordinator.log"
    events = [
        ("snapshot_created", "vm-1", "2026-01-01T00:00:04Z"),
        ("point_committed", "vm-1", "2026-01-01T00:00:06Z"),
        ("vm_finished", "vm-1", "2026-01-01T00:00:07Z"),
    ]
    lines = [json.dumps({"event": e, "vm_moref": v, "timestamp": t}) for e, v, t in events]
    log.write_text("not json\n" + "\n".join(lines) + "\n")
    vms = [{"moref": "vm-1", "seconds": 5.0}]
    out = timeline(log, vms, wall=9.0, job=8.0)
    assert out == {
        "job_seconds": 8.0,
        "process_overhead_seconds": 1.0,
        "vm_snapshot_seconds_sum": 2.0,  # 5 s in all, 3 s after the snapshot existed
        "vm_data_seconds_sum": 2.0,
    }


def test_borg_names_choose_chunker_and_compression(tmp_path: Path) -> None:
    cases = {
        "borg": ("", "lz4"),
        "borg-fixed": ("fixed,1048576", "lz4"),
        "borg-fixed-zstd3": ("fixed,1048576", "zstd,3"),
        "borg-zstd1": ("", "zstd,1"),
    }
    for name, (chunker, compression) in cases.items():
        b = borg_tool(name, tmp_path / "repo", {})
        assert (b.chunker, b.compression) == (chunker, compression)
        cmd = b.backup_cmd([tmp_path / "f"], "full")
        assert cmd[cmd.index("--compression") + 1] == compression


@pytest.mark.parametrize("name", ["borg-fixed-zstd0", "borg-fixed-zstd23", "borg-lz4", "borgx"])
def test_unknown_borg_name_is_refused_by_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match=f"unknown tool '{name}'"):
        make_tools(tmp_path, [name])


def test_bytecode_env_fills_a_private_prefix(tmp_path: Path) -> None:
    env = bytecode_env(tmp_path)
    prefix = Path(env["PYTHONPYCACHEPREFIX"])
    assert prefix.parent == tmp_path and env["PYTHONDONTWRITEBYTECODE"] == ""
    compiled = {p.name.split(".")[0] for p in prefix.rglob("*.pyc")}
    assert {"cli", "vm_backup", "pack_writer", "threading"} <= compiled  # ours and stdlib's
