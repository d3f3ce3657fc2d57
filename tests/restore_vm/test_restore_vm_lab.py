"""restore-vm against the vSphere lab, through the real CLI, from a real repository."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pyVmomi import vim

from coordinator import vm_config
from repository.repository import Repository
from repository.restore import restore_disk
from tests.proxy.relay import CuttingRelay
from tests.repository.conftest import damage_chunk
from tests.restore_vm.answering_relay import AnsweringRelay
from tests.restore_vm.conftest import Env, flat_of, same_bytes, write_config
from tests.restore_vm.lab_point import sha256_file

CTRL_KINDS = vm_config.CONTROLLER_TYPES


def _hardware(cfg: Any) -> dict[str, Any]:
    """What must match between the source and the restored VM, device keys left out."""
    devs = cfg.hardware.device
    ctrls = {d.key: d for d in devs if isinstance(d, vim.vm.device.VirtualController)}
    disks = []
    for d in devs:
        if isinstance(d, vim.vm.device.VirtualDisk):
            c = ctrls[d.controllerKey]
            disks.append((type(c).__name__, c.busNumber, d.unitNumber, d.capacityInBytes))
    return {
        "cpu": cfg.hardware.numCPU,
        "cores": cfg.hardware.numCoresPerSocket,
        "memory": cfg.hardware.memoryMB,
        "guest": cfg.guestId,
        "firmware": cfg.firmware,
        "version": cfg.version,
        "annotation": cfg.annotation,
        "controllers": sorted(
            (type(c).__name__, c.busNumber)
            for c in ctrls.values()
            if type(c).__name__.rsplit(".", 1)[-1] in CTRL_KINDS
        ),
        "disks": sorted(disks),
        "nics": sorted(
            (type(d).__name__, d.backing.deviceName)
            for d in devs
            if isinstance(d, vim.vm.device.VirtualEthernetCard)
        ),
    }


def _restore(env: Env, point: str, *extra: str) -> Any:
    return env.vmbackup("restore-vm", point, "--to", "lab", *extra)


def _check_disks(env: Env, point_id: str, res: dict[str, Any], sums: dict[int, str]) -> None:
    for d in res["disks"]:
        flat = flat_of(env, d["file"])
        out = env.tmp / f"{point_id}-{d['saved_key']}.raw"
        restore_disk(env.repo, point_id, d["saved_key"], out)
        assert same_bytes(flat, out), f"disk {d['saved_key']}: {flat} differs from the point"
        assert sha256_file(flat) == sums[d["saved_key"]], "differs from the frozen disk"
        out.unlink()


def test_restore_rich_vm_matches_hardware_and_bytes(env: Env) -> None:
    r = _restore(
        env, env.rich.point_id, "--datastore", env.shared_ds, "--name", "rich-copy", "--json"
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)["result"]
    [vm] = env.vms_named("rich-copy")
    assert vm._moId == res["vm_moref"]
    assert vm.runtime.powerState == "poweredOff"
    src, new = _hardware(env.rich.config), _hardware(vm.config)
    # the NIC on the network the target lacks is left out, and said so
    lost = [n for n in src["nics"] if n[1] == "Backup Only Net"]
    assert len(lost) == 1
    src["nics"] = [n for n in src["nics"] if n not in lost]
    assert new == src
    assert any("Backup Only Net" in n and "left out" in n for n in res["notes"]), res["notes"]
    assert len(res["disks"]) == 5
    assert {d["controller"].split()[0] for d in res["disks"]} == {
        "ParaVirtualSCSIController",
        "VirtualLsiLogicSASController",
        "VirtualAHCIController",
        "VirtualNVMEController",
        "VirtualIDEController",
    }
    _check_disks(env, env.rich.point_id, res, env.rich.disk_sha256)
    # every disk file is on the datastore asked for, in the new VM's directory
    assert all(d["file"].startswith(f"[{env.shared_ds}] rich-copy/") for d in res["disks"])


def test_restore_lab_vm_to_host_folder_and_local_datastore(env: Env) -> None:
    host = env.lab.vm(env.plain.vm_name)["host"]
    other = next(v["host"] for v in env.lab.vms() if v["host"] != host)
    local = f"{other}_LocalDS"
    dc = env.conn.content.rootFolder.childEntity[0]
    dc.vmFolder.CreateFolder("restores").CreateFolder("today")
    r = _restore(
        env,
        env.plain.point_id,
        "--datastore",
        local,
        "--host",
        other,
        "--folder",
        "restores/today",
        "--name",
        "plain-copy",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)["result"]
    [vm] = env.vms_named("plain-copy")
    assert vm.runtime.host.name == other
    assert vm.parent.name == "today" and vm.parent.parent.name == "restores"
    assert vm.runtime.powerState == "poweredOff"
    assert _hardware(vm.config) == _hardware(env.plain.config)
    assert res["host"] == other and res["datastore"] == local
    _check_disks(env, env.plain.point_id, res, env.plain.disk_sha256)


def test_name_collision_fails_cleanly(env: Env) -> None:
    # the saved name is the source VM's, which still exists
    r = _restore(env, env.plain.point_id, "--datastore", env.shared_ds)
    assert r.returncode == 1
    assert "already exists" in r.stderr and env.plain.vm_name in r.stderr
    assert "--name" in r.stderr
    assert len(env.vms_named(env.plain.vm_name)) == 1
    # and a name taken by an earlier restore
    first = _restore(env, env.plain.point_id, "--datastore", env.shared_ds, "--name", "twice")
    assert first.returncode == 0, first.stderr
    again = _restore(env, env.plain.point_id, "--datastore", env.shared_ds, "--name", "twice")
    assert again.returncode == 1 and "already exists" in again.stderr
    assert len(env.vms_named("twice")) == 1


def test_clear_errors(env: Env) -> None:
    ds = ("--datastore", env.shared_ds, "--name", "never")
    r = _restore(env, "20000101T000000Z-00000000", *ds)
    assert r.returncode == 1 and "no restore point 20000101T000000Z-00000000" in r.stderr
    r = _restore(env, "not-a-point", *ds)
    assert r.returncode == 1 and "not a point id" in r.stderr

    # a point made by import-disk has no saved configuration
    img = env.tmp / "img.raw"
    img.write_bytes(os.urandom(300_000))
    imp = env.vmbackup(
        "repo", "import-disk", "--repo", str(env.repo_path), "--vm", "x", "--disk", "2000", str(img)
    )
    assert imp.returncode == 0, imp.stderr
    pid = imp.stdout.split()[1]
    r = _restore(env, pid, *ds)
    assert r.returncode == 1 and "no saved VM configuration" in r.stderr
    env.repo.delete_point(pid)

    r = _restore(env, env.plain.point_id, "--datastore", "NoSuchDS", "--name", "never")
    assert r.returncode == 1
    assert "datastore 'NoSuchDS' not found" in r.stderr and env.shared_ds in r.stderr
    r = _restore(env, env.plain.point_id, *ds, "--host", "nohost")
    assert r.returncode == 1 and "host 'nohost' not found" in r.stderr
    r = _restore(env, env.plain.point_id, *ds, "--folder", "no/such")
    assert r.returncode == 1 and "folder 'no/such' not found" in r.stderr

    r = env.vmbackup("restore-vm", env.plain.point_id, "--to", "elsewhere", *ds)
    assert r.returncode == 2 and "no vCenter named 'elsewhere'" in r.stderr

    # vCenter unreachable: nothing listens on that port
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bad = write_config(
        env.stack, env.tmp / "down.toml", env.repo_path, f"https://127.0.0.1:{port}/sdk"
    )
    r = env.vmbackup("restore-vm", env.plain.point_id, "--to", "lab", *ds, config=bad)
    assert r.returncode == 1 and "unreachable" in r.stderr and str(port) in r.stderr
    bad = write_config(env.stack, env.tmp / "pw.toml", env.repo_path, password="wrong")
    r = env.vmbackup("restore-vm", env.plain.point_id, "--to", "lab", *ds, config=bad)
    assert r.returncode == 1 and "refused us" in r.stderr and "login refused" in r.stderr
    assert not env.vms_named("never")


def test_corrupt_chunk_fails_and_leaves_no_vm(env: Env, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "repo"
    shutil.copytree(env.repo_path, copy)
    point = env.repo.get_point(env.plain.point_id)
    dmap = env.repo.load_map(point, point.disks[-1].key)
    cid = next(c for _i, c in dmap.iter_ids() if c != b"\0" * 32)
    damage_chunk(Repository.open(copy), cid, 100)  # in its pack (the copy's open ones sealed)
    cfg = write_config(env.stack, tmp_path / "c.toml", copy)
    r = env.restore_vm(env.plain.point_id, "broken-copy", config=cfg)
    assert r.returncode == 1, r.stdout
    assert "chunk" in r.stderr
    assert not env.vms_named("broken-copy"), "a half-restored VM was left behind"
    assert not (Path(env.lab.datastores[env.shared_ds]) / "broken-copy").exists()


def test_a_dropped_upload_starts_the_disk_again_and_lands_exact(env: Env, tmp_path: Path) -> None:
    """The connection of a disk's PUT is cut mid-body: that disk is sent again from its
    first byte and the VM's disks end up exact; when every attempt is cut, a clear error
    and no VM left behind."""
    target = (env.lab.host, env.lab.port)
    relay = CuttingRelay(target, cut_after=2**20 + 333, cuts=1, upstream=True)
    try:
        url = f"https://127.0.0.1:{relay.port}/sdk"
        cfg = write_config(env.stack, tmp_path / "relay.toml", env.repo_path, url)
        r = env.restore_vm(env.plain.point_id, "after-a-cut", "--json", config=cfg)
        assert r.returncode == 0, r.stderr
        assert relay.cuts_done == 1
    finally:
        relay.close()
    res = json.loads(r.stdout)["result"]
    assert [d["attempts"] for d in res["disks"]] == [2, 1]  # the first disk was cut
    assert "restore_vm_upload_retry" in r.stderr
    _check_disks(env, env.plain.point_id, res, env.plain.disk_sha256)

    relay = CuttingRelay(target, cut_after=2**20 + 333, cuts=2, upstream=True)
    try:
        cfg = write_config(
            env.stack,
            tmp_path / "relay2.toml",
            env.repo_path,
            f"https://127.0.0.1:{relay.port}/sdk",
        )
        r = env.restore_vm(env.plain.point_id, "cut-twice", "--upload-attempts", "2", config=cfg)
        assert relay.cuts_done == 2
    finally:
        relay.close()
    assert r.returncode == 1, r.stdout
    assert "after 2 attempts" in r.stderr and "-flat.vmdk" in r.stderr
    assert not env.vms_named("cut-twice"), "a half-restored VM was left behind"
    assert not (Path(env.lab.datastores[env.shared_ds]) / "cut-twice").exists()
    r = _restore(env, env.plain.point_id, "--datastore", env.shared_ds, "--upload-attempts", "0")
    assert r.returncode == 2 and "--upload-attempts must be at least 1" in r.stderr


def test_an_upload_answered_5xx_is_sent_again_and_a_4xx_is_not(env: Env, tmp_path: Path) -> None:
    """A server that answers a disk's PUT with 503 (busy) gets that disk again from its
    first byte and the disks end up exact; one answering every attempt with 503 leaves a
    clear error and no VM; a 403 is final at once (sending again would not change it)."""
    target = (env.lab.host, env.lab.port)

    def restore_through(relay: AnsweringRelay, name: str, *args: str) -> Any:
        cfg = write_config(
            env.stack, tmp_path / f"{name}.toml", env.repo_path, relay.url, None, relay.fingerprint
        )
        try:
            return env.restore_vm(env.plain.point_id, name, *args, config=cfg)
        finally:
            relay.close()

    relay = AnsweringRelay(target, status=503, answers=1)
    r = restore_through(relay, "after-a-503", "--json")
    assert r.returncode == 0, r.stderr
    assert relay.answered == 1
    res = json.loads(r.stdout)["result"]
    assert [d["attempts"] for d in res["disks"]] == [2, 1]
    assert "restore_vm_upload_retry" in r.stderr and "HTTP 503" in r.stderr
    _check_disks(env, env.plain.point_id, res, env.plain.disk_sha256)

    relay = AnsweringRelay(target, status=503, answers=2)
    r = restore_through(relay, "busy-twice", "--upload-attempts", "2")
    assert r.returncode == 1, r.stdout
    assert relay.answered == 2
    assert "HTTP 503" in r.stderr and "after 2 attempts" in r.stderr
    assert not env.vms_named("busy-twice"), "a half-restored VM was left behind"

    relay = AnsweringRelay(target, status=403, answers=3)
    r = restore_through(relay, "forbidden", "--upload-attempts", "3")
    assert r.returncode == 1, r.stdout
    assert relay.answered == 1, "a 4xx was sent again"
    assert "HTTP 403" in r.stderr and "restore_vm_upload_retry" not in r.stderr
    assert not env.vms_named("forbidden"), "a half-restored VM was left behind"
    assert not (Path(env.lab.datastores[env.shared_ds]) / "forbidden").exists()


def test_repo_list_shows_restore_metadata(env: Env) -> None:
    r = env.vmbackup("repo", "list", "--repo", str(env.repo_path))
    assert r.returncode == 0, r.stderr
    assert "4 vCPU (2/socket), 3072 MiB, efi, ubuntu64Guest, vmx-19" in r.stdout
    assert "@nvme0:0" in r.stdout and "@ide1:0" in r.stdout and "@lsilogic-sas1:3" in r.stdout
    j = env.vmbackup("repo", "list", "--repo", str(env.repo_path), "--json")
    doc = json.loads(j.stdout)["result"]
    [p] = [p for p in doc["points"] if p["id"] == env.rich.point_id]
    # the configuration as the API returned it, in full
    assert p["vm_config"]["_vimtype"] == "vim.vm.ConfigInfo"
    assert p["vm_config"]["hardware"]["numCPU"] == 4
    assert p["hardware"]["memory_mb"] == 3072
    assert {c["type"] for c in p["hardware"]["controllers"]} >= {"VirtualNVMEController"}
    by_key = {d["key"]: d for d in p["disks"]}
    for hd in p["hardware"]["disks"]:
        info = by_key[hd["key"]]["info"]
        assert info["controller_key"] == hd["controller_key"]
        assert info["unit_number"] == hd["unit_number"]
        ctrl = next(c for c in p["hardware"]["controllers"] if c["key"] == hd["controller_key"])
        assert info["controller_type"] == ctrl["type"] and info["controller_bus"] == ctrl["bus"]
    digest = hashlib.sha256(json.dumps(p["vm_config"], sort_keys=True).encode()).hexdigest()
    saved = env.repo.get_point(env.rich.point_id).vm_config
    assert digest == hashlib.sha256(saved).hexdigest()
