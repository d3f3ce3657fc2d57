"""LabSpec, datastore paths and the build/serve entry points (no simulator needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lab import Lab, LabError, LabSpec
from lab.guest import flat_path, parse_ds_path

ROOT = Path(__file__).resolve().parents[2]


def test_spec_defaults_and_flags() -> None:
    spec = LabSpec(disk_sizes=[1, 2], odd_names=True, fail_snapshot_vm="vm a")
    flags = spec.to_flags()
    assert "--disk-sizes=1,2" in flags
    assert "--odd-names=true" in flags
    assert "--fail-snapshot-vm=vm a" in flags
    assert spec.vm_count == 4


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"datacenters": 0}, "datacenters"),
        ({"vms_per_host": -1}, "vms_per_host"),
        ({"clusters": 0, "standalone_hosts": 0}, "at least one host"),
        ({"disk_sizes": []}, "disk_sizes"),
        ({"disk_sizes": [0]}, "disk_sizes"),
        ({"cbt_granularity": 1000}, "cbt_granularity"),
        ({"cbt_page_size": 0}, "cbt_page_size"),
        ({"shared_datastores": 0, "local_datastores": False}, "no datastores"),
        ({"clusters": True}, "clusters"),
    ],
)
def test_spec_rejects_bad_values(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        LabSpec(**kwargs)  # type: ignore[arg-type]  # the bad input under test


ds_names = st.text(min_size=1, max_size=20).filter(lambda s: "]" not in s and "\x00" not in s)
rel_paths = st.text(min_size=1, max_size=40).filter(lambda s: not s.startswith(" "))


@given(ds=ds_names, rel=rel_paths)
def test_parse_ds_path_round_trips(ds: str, rel: str) -> None:
    assert parse_ds_path(f"[{ds}] {rel}") == (ds, rel)


def test_flat_path_rule(tmp_path: Path) -> None:
    stores = {"Shared Store ü": str(tmp_path)}
    assert (
        flat_path(stores, "[Shared Store ü] vm 1/disk1.vmdk") == tmp_path / "vm 1/disk1-flat.vmdk"
    )
    assert flat_path(stores, "[Shared Store ü] d/x-flat.vmdk") == tmp_path / "d/x-flat.vmdk"
    for bad in (
        "no brackets",
        "[other] a.vmdk",
        "[Shared Store ü] a.txt",
        "[Shared Store ü] ../x.vmdk",
    ):
        with pytest.raises(LabError):
            flat_path(stores, bad)


def test_bad_flag_fails_start_with_its_message() -> None:
    with pytest.raises(LabError, match="no-such-flag"):
        Lab.start(extra_flags=["--no-such-flag"])


def test_serve_help_runs_the_binary() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lab", "serve", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0
    assert "-cbt-page-size" in proc.stderr
