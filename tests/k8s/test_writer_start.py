"""k8s/base/writer_start.py: the shard range of each writer of the StatefulSet."""

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
def test_ranges_partition_the_shards(n_shards: int, data: st.DataObject) -> None:
    """Every shard has exactly one writer, each writer at least one, sizes differ by <= 1."""
    ws = load_writer_start()
    replicas = data.draw(st.integers(1, min(n_shards, 256)))
    owned: list[int] = []
    sizes = []
    for ordinal in range(replicas):
        env = {"HOSTNAME": f"vmbackup-writer-{ordinal}", "WRITER_REPLICAS": str(replicas)}
        spec = ws.writer_env(env, n_shards)["VMBACKUP_WRITER__SHARDS"]
        shards = parse_shard_set(spec, n_shards)  # the writer's own parser accepts it
        owned += shards
        sizes.append(len(shards))
    assert sorted(owned) == list(range(n_shards))
    assert max(sizes) - min(sizes) <= 1


def test_examples() -> None:
    ws = load_writer_start()
    assert [ws.shard_range(i, 4, 16) for i in range(4)] == [(0, 3), (4, 7), (8, 11), (12, 15)]
    assert [ws.shard_range(i, 3, 16) for i in range(3)] == [(0, 5), (6, 10), (11, 15)]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HOSTNAME": "writer", "WRITER_REPLICAS": "4"}, "no StatefulSet ordinal"),
        ({"HOSTNAME": "vmbackup-writer-4", "WRITER_REPLICAS": "4"}, "outside 0..3"),
        ({"HOSTNAME": "vmbackup-writer-0", "WRITER_REPLICAS": "four"}, "must be an integer"),
        ({"HOSTNAME": "vmbackup-writer-0", "WRITER_REPLICAS": "0"}, "must be >= 1"),
        ({"HOSTNAME": "vmbackup-writer-0", "WRITER_REPLICAS": "17"}, "only 16 shards"),
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
        {"HOSTNAME": "vmbackup-writer-2", "WRITER_REPLICAS": "3"},
        sys.executable,
        "-c",
        show,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["vmbackup-writer-2", "7-9"]
    assert "owns shards 7-9 of 10" in res.stderr


def test_refuses_to_start_on_bad_replicas(tmp_path: Path) -> None:
    res = _run(tmp_path, {"HOSTNAME": "vmbackup-writer-0", "WRITER_REPLICAS": "11"}, "true")
    assert res.returncode == 2
    assert "11 writers but only 10 shards" in res.stderr
