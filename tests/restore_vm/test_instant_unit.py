"""The parts of instant recovery that need no lab: the descriptor the host reads, the
VM's folder name, the command-line checks."""

from __future__ import annotations

import argparse

from coordinator.restore.cli import usage_problem
from coordinator.restore.instant import _dir_name
from coordinator.restore.instant_datastore import descriptor


def test_descriptor_names_the_flat_extent_in_whole_sectors() -> None:
    text = descriptor(3 * 2**20 + 1, "disk-2000-flat.vmdk")
    assert text.startswith("# Disk DescriptorFile\n")
    assert 'createType="vmfs"' in text
    assert 'RW 6145 VMFS "disk-2000-flat.vmdk"' in text  # 6144 sectors and a partial one


def test_vm_folder_names_keep_to_safe_characters() -> None:
    assert _dir_name("web1-now") == "web1-now"
    assert _dir_name("DC0 VM1 Zürich – web") == "DC0_VM1_Z_rich___web"
    assert _dir_name("../..") == "_"  # never a way out of the datastore
    assert _dir_name("a/b") == "a_b" and _dir_name("...") == "vm"


def _args(**kw: object) -> argparse.Namespace:
    base = {
        "instant": False,
        "migrate": False,
        "transport": None,  # the option's default (http)
        "keep_failed": False,
        "in_place": False,
        "metrics_port": 0,
    }
    return argparse.Namespace(**{**base, **kw})


def test_usage_problems() -> None:
    assert usage_problem(_args()) == ""
    assert usage_problem(_args(instant=True, migrate=True)) == ""
    assert usage_problem(_args(migrate=True)) == "--migrate needs --instant"
    assert "--transport" in usage_problem(_args(instant=True, transport="nbd"))
    assert "--keep-failed" in usage_problem(_args(instant=True, keep_failed=True))
    assert usage_problem(_args(instant=True, transport="http")) == ""
    assert "--in-place" in usage_problem(_args(instant=True, in_place=True))
    assert usage_problem(_args(metrics_port=9300)) == "--metrics-port needs --instant"
    assert usage_problem(_args(instant=True, metrics_port=9300)) == ""
    assert "not a port" in usage_problem(_args(instant=True, metrics_port=70000))
