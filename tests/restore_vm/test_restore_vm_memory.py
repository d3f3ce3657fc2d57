"""restore-vm streams: its peak memory does not grow with the disk it uploads."""

from __future__ import annotations

import os
import subprocess
import sys

from lab.guest import write_at
from lab.stack import ROOT
from tests.restore_vm.conftest import Env, flat_of, same_bytes
from tests.restore_vm.lab_point import back_up, create_simple_vm

MiB = 2**20
# runs the CLI in-process and reports this process's peak RSS (KiB) on the last line
_PEAK = (
    "import resource, sys\n"
    "from vmbackup.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "print('maxrss', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def _peak_kib(env: Env, point_id: str, name: str) -> int:
    args = ["restore-vm", point_id, "--config", str(env.config), "--to", "lab"]
    args += ["--datastore", env.shared_ds, "--name", name]
    r = subprocess.run(
        [sys.executable, "-c", _PEAK, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    return int(r.stderr.strip().splitlines()[-1].split()[1])


def test_peak_memory_does_not_follow_disk_size(env: Env) -> None:
    big = 160 * MiB
    vm = create_simple_vm(env.conn, "big", env.shared_ds, big)
    disk = env.conn.get_properties(vm, ["config.hardware.device"])["config.hardware.device"]
    path = next(flat_of(env, d.backing.fileName) for d in disk if hasattr(d, "capacityInBytes"))
    # incompressible data all over the disk: every chunk is distinct and must be sent
    for off in range(0, big, 4 * MiB):
        write_at(path, big, off, os.urandom(MiB))
    point = back_up(env.conn, env.lab, env.repo, vm)
    small_kib = _peak_kib(env, env.plain.point_id, "mem-small")  # 5 MiB of disks
    big_kib = _peak_kib(env, point.point_id, "mem-big")
    # a copy of the disk in memory would add 160 MiB; a few chunks and buffers are fine
    assert big_kib - small_kib < 48 * 1024, (small_kib, big_kib)
    [new] = env.vms_named("mem-big")
    dev = env.conn.get_properties(new, ["config.hardware.device"])["config.hardware.device"]
    restored = next(flat_of(env, d.backing.fileName) for d in dev if hasattr(d, "capacityInBytes"))
    assert same_bytes(restored, path)
