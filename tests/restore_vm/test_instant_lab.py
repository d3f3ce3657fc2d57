"""`vmbackup restore-vm --instant [--migrate]` in the lab: the VM runs from the backup
(real nbdkit exports under nbdfuse, mounted on a lab host as an NFS datastore), moves to
a production datastore with RelocateVM_Task (the lab's host copies the files), and a
stop leaves nothing behind: no VM, no datastore, no mount, no nbdkit or nbdfuse."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim

from export.nbdfuse import mounted
from lab.guest import DiskWriter
from lab.stack import ROOT
from repository.restore import restore_disk
from tests.restore_vm.conftest import Env, same_bytes
from tests.restore_vm.lab_point import sha256_file

BOUND_S = 600  # a hang, not a speed: the machine is shared and loaded
GUEST_WRITE = (4096 + 512, b"written by the instant VM's guest " * 64)


class Instant:
    """One `restore-vm --instant` running in the background (stopped at the test's end
    if the test did not: a failed test must not leave it serving for the next one)."""

    running: list[Instant] = []

    def __init__(
        self, env: Env, name: str, export_dir: Path, *extra: str, config: Path | None = None
    ) -> None:
        self.env, self.name, self.export_dir = env, name, export_dir
        self.out, self.err = export_dir.parent / f"{name}.out", export_dir.parent / f"{name}.err"
        argv = [
            sys.executable,
            "-m",
            "vmbackup",
            "restore-vm",
            env.plain.point_id,
            "--config",
            str(config or env.config),
            "--to",
            "lab",
            "--datastore",
            env.shared_ds,
            "--name",
            name,
            "--instant",
            "--export-dir",
            str(export_dir),
            "--json",
            *extra,
        ]
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                argv, cwd=ROOT, env=env.stack._env({}), stdout=out, stderr=err
            )
        Instant.running.append(self)

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def wait_for(self, what: str, ok: Any) -> Any:
        deadline = time.monotonic() + BOUND_S
        while time.monotonic() < deadline:
            got = ok()
            if got:
                return got
            assert self.proc.poll() is None, f"exited {self.proc.returncode}: {self.stderr()}"
            time.sleep(0.1)
        raise AssertionError(f"no {what} after {BOUND_S} s: {self.stderr()}")

    def running_vm(self) -> Any:
        def up() -> Any:
            vms = self.env.vms_named(self.name)
            return vms[0] if vms and vms[0].runtime.powerState == "poweredOn" else None

        return self.wait_for("running VM", up)

    def finish(self, sig: int | None = None) -> tuple[int, dict[str, Any]]:
        if sig is not None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=BOUND_S)
        doc: dict[str, Any] = json.loads(self.out.read_text())
        assert doc["exit"] == rc, doc
        return rc, doc


@pytest.fixture
def export_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "exports"
    d.mkdir()
    yield d
    while Instant.running:
        run = Instant.running.pop()
        if run.proc.poll() is None:
            run.proc.terminate()
            run.proc.wait(timeout=BOUND_S)


def _processes_under(*paths: Path) -> list[str]:
    """nbdkit or nbdfuse processes whose command line names a path below one of ``paths``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        name = Path(argv[0].decode(errors="replace")).name if argv else ""
        if name in ("nbdkit", "nbdfuse") and any(str(p).encode() in a for a in argv for p in paths):
            found.append(f"{pid}: {b' '.join(argv).decode(errors='replace')}")
    return found


def _free_ports(n: int) -> int:
    """A port P with P .. P+n-1 free now (the exports' metrics ports)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base: int = s.getsockname()[1]
        if base + n >= 65536:
            continue
        try:
            held = []
            for p in range(base, base + n):
                s = socket.socket()
                held.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise AssertionError(f"no {n} consecutive free ports")


def _metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    [value] = [ln.split()[-1] for ln in text.splitlines() if ln.split(" ")[0] == name]
    return float(value)


def _datastores(env: Env) -> list[str]:
    content = env.conn.content
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.Datastore], True)
    try:
        return [d.name for d in view.view]
    finally:
        view.DestroyView()


def _assert_nothing_left(env: Env, export_dir: Path, vm_gone: str = "") -> None:
    with open("/proc/mounts", encoding="utf-8") as fh:
        assert str(export_dir) not in fh.read(), "a mount of the export is left"
    assert _processes_under(export_dir, env.repo_path) == []  # nbdfuse, nbdkit
    assert list(export_dir.iterdir()) == [], "the export's directory is left"
    assert [d for d in _datastores(env) if d.startswith("vmbackup-instant-")] == []
    for h in env.conn.content.rootFolder.childEntity[0].hostFolder.childEntity[0].host:
        assert all(not d.name.startswith("vmbackup-instant-") for d in h.datastore)
    if vm_gone:
        assert env.vms_named(vm_gone) == []


def _flat_on_export(vm: Any, key: int) -> Path:
    """The local file behind a disk of the instant VM (the lab's NFS datastore is the
    export's directory on this machine)."""
    disk = next(d for d in vm.config.hardware.device if d.key == key)
    ds = disk.backing.datastore
    rel = disk.backing.fileName.split("] ", 1)[1].replace(".vmdk", "-flat.vmdk")
    return Path(ds.summary.url) / rel


def _destroy(vm: Any) -> None:
    if vm.runtime.powerState == "poweredOn":
        vm.PowerOffVM_Task()
    vm.Destroy_Task()


def _check_moved(env: Env, doc: dict[str, Any], tmp: Path, write: tuple[int, bytes] | None) -> None:
    res = doc["result"]
    assert res["migrated"] is True
    files = {d["key"]: d["file"] for d in res["disks"]}
    assert len(files) == len(env.plain.capacities)
    for n, (key, file) in enumerate(sorted(files.items())):
        assert file.startswith(f"[{env.shared_ds}] "), file
        moved = env.lab.local_path(file)
        saved = sorted(env.plain.capacities)[n]
        want = tmp / f"want-{saved}.raw"
        restore_disk(env.repo, env.plain.point_id, saved, want)
        if write is not None and n == 0:
            with open(want, "r+b") as fh:
                fh.seek(write[0])
                fh.write(write[1])
        else:
            assert sha256_file(moved) == env.plain.disk_sha256[saved]
        assert same_bytes(moved, want), f"disk {key}: {moved} differs from the point"
        assert os.path.getsize(moved) == env.plain.capacities[saved]


def test_instant_migrate_now_lands_the_point_byte_for_byte(
    env: Env, export_dir: Path, tmp_path: Path
) -> None:
    run = Instant(env, "instant-now", export_dir, "--migrate")
    rc, doc = run.finish()
    assert rc == 0, run.stderr()
    assert "is running on host" in run.stderr() and "migrated" in run.stderr()
    _check_moved(env, doc, tmp_path, None)
    [vm] = env.vms_named("instant-now")
    assert vm.runtime.powerState == "poweredOn"  # it never stopped
    assert vm._moId == doc["result"]["vm_moref"]
    _assert_nothing_left(env, export_dir)
    _destroy(vm)


def test_a_guest_write_before_the_migration_is_kept(
    env: Env, export_dir: Path, tmp_path: Path
) -> None:
    base = _free_ports(len(env.plain.capacities))
    run = Instant(env, "instant-write", export_dir, "--metrics-port", str(base))
    vm = run.running_vm()
    key = min(d.key for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk))
    flat = _flat_on_export(vm, key)
    assert mounted(flat)  # nbdfuse serves it
    first = f"http://127.0.0.1:{base}/metrics"  # the first disk's export
    assert f"metrics: {first}" in run.stderr()
    served = _metric(first, "vmbackup_export_read_bytes_total")
    with DiskWriter(flat) as w:  # the guest's I/O path: through NFS into the export
        w.pwrite(GUEST_WRITE[1], GUEST_WRITE[0])
        assert w.pread(len(GUEST_WRITE[1]), GUEST_WRITE[0]) == GUEST_WRITE[1]
    with open(flat, "rb") as fh:  # a region nothing read yet: the page cache has none of it
        fh.seek(os.path.getsize(flat) // 2)
        assert len(fh.read(65536)) == 65536
    assert _metric(first, "vmbackup_export_open") == 1
    assert _metric(first, "vmbackup_export_read_bytes_total") >= served + 65536
    run.proc.send_signal(signal.SIGUSR1)  # migrate now
    rc, doc = run.finish()
    assert rc == 0, run.stderr()
    _check_moved(env, doc, tmp_path, GUEST_WRITE)
    assert doc["result"]["metrics"] == [
        f"http://127.0.0.1:{base + n}/metrics" for n in range(len(env.plain.capacities))
    ]
    _assert_nothing_left(env, export_dir)
    # the repository never saw the write: the point restores as it was backed up
    out = tmp_path / "again.raw"
    restore_disk(env.repo, env.plain.point_id, sorted(env.plain.capacities)[0], out)
    assert sha256_file(out) == env.plain.disk_sha256[sorted(env.plain.capacities)[0]]
    _destroy(env.vms_named("instant-write")[0])


def test_a_failed_migration_leaves_it_running_and_says_so(env: Env, export_dir: Path) -> None:
    env.lab.inject(fail_relocate_vm="instant-fail")
    try:
        run = Instant(env, "instant-fail", export_dir, "--migrate")
        # the whole line, not a log line's "failed" before it
        run.wait_for("failure message", lambda: "still runs from the export" in run.stderr())
        assert "migration of 'instant-fail' to datastore" in run.stderr()
        [vm] = env.vms_named("instant-fail")
        assert vm.runtime.powerState == "poweredOn"
        files = [
            d.backing.fileName for d in vm.config.hardware.device if hasattr(d, "capacityInKB")
        ]
        assert files and all(f.startswith("[vmbackup-instant-") for f in files), files
        assert all(
            mounted(_flat_on_export(vm, d.key))
            for d in vm.config.hardware.device
            if isinstance(d, vim.vm.device.VirtualDisk)
        )
    finally:
        env.lab.inject(fail_relocate_vm=None)
    rc, doc = run.finish(signal.SIGTERM)
    assert rc == 1
    assert doc["result"]["migrated"] is False
    assert "migration of 'instant-fail'" in doc["error"]["message"]
    assert "NoDiskSpace" in doc["error"]["message"] or "space" in doc["error"]["message"].lower()
    _assert_nothing_left(env, export_dir, vm_gone="instant-fail")


def test_a_failed_migration_is_retried_with_sigusr1(
    env: Env, export_dir: Path, tmp_path: Path
) -> None:
    env.lab.inject(fail_relocate_vm="instant-retry")
    try:
        run = Instant(env, "instant-retry", export_dir, "--migrate")
        run.wait_for("failure message", lambda: "still runs from the export" in run.stderr())
    finally:
        env.lab.inject(fail_relocate_vm=None)
    run.proc.send_signal(signal.SIGUSR1)
    rc, doc = run.finish()
    assert rc == 0, run.stderr()
    assert doc["result"]["migration_error"].startswith("migration of 'instant-retry'")
    _check_moved(env, doc, tmp_path, None)
    _assert_nothing_left(env, export_dir)
    _destroy(env.vms_named("instant-retry")[0])


def test_stop_after_power_on_leaves_nothing(env: Env, export_dir: Path) -> None:
    run = Instant(env, "instant-stop", export_dir)
    run.running_vm()
    rc, doc = run.finish(signal.SIGINT)
    assert rc == 0, run.stderr()
    assert doc["result"]["stopped_by"] == "SIGINT" and doc["result"]["power_state"] == "removed"
    _assert_nothing_left(env, export_dir, vm_gone="instant-stop")


def test_cancel_before_power_on_leaves_nothing(env: Env, export_dir: Path) -> None:
    env.lab.inject(slow_soap_ms=10000, slow_soap_method="CreateVM_Task")
    try:
        run = Instant(env, "instant-cancel", export_dir, "--migrate")
        run.wait_for("export process", lambda: _processes_under(export_dir))
        run.wait_for(
            "datastore", lambda: any(d.startswith("vmbackup-instant-") for d in _datastores(env))
        )
        rc, doc = run.finish(signal.SIGTERM)
    finally:
        env.lab.inject(slow_soap_ms=0, slow_soap_method="")
    assert rc == 130, run.stderr()
    assert doc["error"]["cause"] == "interrupted"
    _assert_nothing_left(env, export_dir, vm_gone="instant-cancel")


def test_usage_errors(env: Env) -> None:
    r = env.vmbackup(
        "restore-vm", env.plain.point_id, "--to", "lab", "--datastore", env.shared_ds, "--migrate"
    )
    assert r.returncode == 2 and "--migrate needs --instant" in r.stderr
    r = env.vmbackup(
        "restore-vm",
        env.plain.point_id,
        "--to",
        "lab",
        "--datastore",
        "no-such-ds",
        "--name",
        "x",
        "--instant",
    )
    assert r.returncode == 1 and "no-such-ds" in r.stderr and "not started" in r.stderr
