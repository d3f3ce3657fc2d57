"""k8s/base/writer_start.py: the shard range of each writer of the StatefulSet, at any scale."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.sharding import parse_shard_set
from tests.k8s.conftest import K8S, ROOT

SCRIPT = K8S / "base" / "writer_start.py"


@cache
def load_writer_start() -> ModuleType:
    spec = importlib.util.spec_from_file_location("writer_start", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@given(n_shards=st.integers(1, 4096), data=st.data())
def test_groups_partition_the_shards_at_every_scale(n_shards: int, data: st.DataObject) -> None:
    """With any number of writers >= the groups (what KEDA may run), every shard is consumed,
    the first ``groups`` writers own disjoint ranges whose sizes differ by <= 1, and a
    writer's range never changes with the scale (stable ownership)."""
    ws = load_writer_start()
    groups = data.draw(st.integers(1, min(n_shards, 256)))
    replicas = data.draw(st.integers(groups, groups * 3))

    def shards_of(ordinal: int) -> list[int]:
        env = {"HOSTNAME": f"vmbackup-writer-{ordinal}", "WRITER_SHARD_GROUPS": str(groups)}
        spec = ws.writer_env(env, n_shards)["VMBACKUP_WRITER__SHARDS"]
        return parse_shard_set(spec, n_shards)  # the writer's own parser accepts it

    owners = [shards_of(i) for i in range(groups)]
    assert sorted(s for shards in owners for s in shards) == list(range(n_shards))
    sizes = [len(shards) for shards in owners]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    for ordinal in range(groups, replicas):
        assert shards_of(ordinal) == owners[ordinal % groups]


def test_examples() -> None:
    ws = load_writer_start()
    assert [ws.shard_range(i, 4, 16) for i in range(4)] == [(0, 3), (4, 7), (8, 11), (12, 15)]
    assert [ws.shard_range(i, 3, 16) for i in range(3)] == [(0, 5), (6, 10), (11, 15)]
    env = {"HOSTNAME": "vmbackup-writer-5", "WRITER_SHARD_GROUPS": "4"}
    assert ws.writer_env(env, 16)["VMBACKUP_WRITER__SHARDS"] == "4-7"  # joins group 1


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HOSTNAME": "writer", "WRITER_SHARD_GROUPS": "4"}, "no StatefulSet ordinal"),
        ({"HOSTNAME": "vmbackup-writer-0", "WRITER_SHARD_GROUPS": "four"}, "must be an integer"),
        ({"HOSTNAME": "vmbackup-writer-0", "WRITER_SHARD_GROUPS": "0"}, "must be >= 1"),
        ({"HOSTNAME": "vmbackup-writer-0"}, "must be an integer"),
        ({"HOSTNAME": "vmbackup-writer-0", "WRITER_SHARD_GROUPS": "17"}, "only 16 shards"),
    ],
)
def test_bad_input_is_named(env: dict[str, str], message: str) -> None:
    ws = load_writer_start()
    with pytest.raises(ws.StartError, match=message):
        ws.writer_env(env, 16)


def _run(tmp_path: Path, env: dict[str, str], *command: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "writer.toml"
    cfg.write_text("[broker]\nn_shards = 10\n", encoding="utf-8")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VMBACKUP_")}
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--", *command, "--config", str(cfg)],
        env={**clean, **env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_execs_the_command_with_the_shards(tmp_path: Path) -> None:
    """As in the pod: reads n_shards from the config, then execs the given command."""
    show = (
        "import os; e = os.environ; print(e['VMBACKUP_WRITER__NAME'], e['VMBACKUP_WRITER__SHARDS'])"
    )
    res = _run(
        tmp_path,
        {"HOSTNAME": "vmbackup-writer-5", "WRITER_SHARD_GROUPS": "3"},
        sys.executable,
        "-c",
        show,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["vmbackup-writer-5", "7-9"]
    assert "owns shards 7-9 of 10" in res.stderr


def test_refuses_to_start_on_bad_groups(tmp_path: Path) -> None:
    res = _run(tmp_path, {"HOSTNAME": "vmbackup-writer-0", "WRITER_SHARD_GROUPS": "11"}, "true")
    assert res.returncode == 2
    assert "11 shard groups but only 10 shards" in res.stderr
