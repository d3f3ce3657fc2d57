"""vm_config parsing and the CreateVM spec, from configs serialized as the job does it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pyVmomi import vim
from pyVmomi.VmomiJSONEncoder import VmomiJSONEncoder

from coordinator import vm_config
from coordinator.restore.errors import RestoreVmError
from coordinator.restore.spec import IDE_KEYS, build_spec
from coordinator.restore.target import Target
from coordinator.restore.upload import flat_file
from repository.points import Point, PointDisk

D = vim.vm.device


def _disk(key: int, ctrl: int, unit: int, cap: int) -> Any:
    return D.VirtualDisk(
        key=key,
        controllerKey=ctrl,
        unitNumber=unit,
        capacityInBytes=cap,
        capacityInKB=cap // 1024,
        deviceInfo=vim.Description(label=f"Hard disk {key}", summary=""),
        backing=D.VirtualDisk.FlatVer2BackingInfo(
            fileName=f"[ds1] vm/vm_{key}.vmdk", diskMode="persistent", thinProvisioned=False
        ),
    )


def saved_config() -> bytes:
    """A vim.vm.ConfigInfo serialized exactly like coordinator/job.py does."""
    devices = [
        D.VirtualIDEController(key=200, busNumber=0),
        D.VirtualIDEController(key=201, busNumber=1),
        D.VirtualPCIController(key=100, busNumber=0),
        D.VirtualLsiLogicController(key=1000, busNumber=0, sharedBus="noSharing"),
        D.ParaVirtualSCSIController(key=1001, busNumber=2, sharedBus="physicalSharing"),
        D.VirtualAHCIController(key=15000, busNumber=0),
        D.VirtualNVMEController(key=31000, busNumber=1),
        _disk(2000, 1000, 0, 10 * 2**20),
        _disk(2001, 1001, 5, 3 * 2**20 + 512),
        _disk(16000, 15000, 2, 2**20),
        _disk(32000, 31000, 0, 2**20),
        _disk(3000, 201, 1, 2**20),
        _disk(2002, 1000, 1, 2**20),  # not in the point (say, independent)
        D.VirtualCdrom(
            key=3002,
            controllerKey=200,
            unitNumber=0,
            deviceInfo=vim.Description(label="CD/DVD drive 1", summary=""),
        ),
        D.VirtualVmxnet3(
            key=4000,
            deviceInfo=vim.Description(label="Network adapter 1", summary=""),
            backing=D.VirtualEthernetCard.NetworkBackingInfo(deviceName="VM Network"),
            macAddress="00:50:56:01:02:03",
            connectable=D.VirtualDevice.ConnectInfo(startConnected=True),
        ),
        D.VirtualE1000(
            key=4001,
            deviceInfo=vim.Description(label="Network adapter 2", summary=""),
            backing=D.VirtualEthernetCard.NetworkBackingInfo(deviceName="DMZ"),
        ),
        D.VirtualE1000e(
            key=4002,
            deviceInfo=vim.Description(label="Network adapter 3", summary=""),
            backing=D.VirtualEthernetCard.DistributedVirtualPortBackingInfo(
                port=vim.dvs.PortConnection(switchUuid="old-switch", portgroupKey="dvportgroup-9")
            ),
        ),
        D.VirtualVmxnet3(
            key=4003,
            deviceInfo=vim.Description(label="Network adapter 4", summary=""),
            backing=D.VirtualEthernetCard.NetworkBackingInfo(deviceName="Prod"),
        ),
    ]
    cfg = vim.vm.ConfigInfo(
        name="db01",
        guestId="rhel9_64Guest",
        firmware="efi",
        version="vmx-19",
        annotation="the database",
        cpuHotAddEnabled=True,
        memoryHotAddEnabled=False,
        bootOptions=vim.vm.BootOptions(efiSecureBootEnabled=True),
        hardware=vim.vm.VirtualHardware(
            numCPU=8, numCoresPerSocket=4, memoryMB=16384, device=devices
        ),
    )
    return json.dumps(cfg, cls=VmomiJSONEncoder, sort_keys=True).encode()


def point(
    disks: dict[int, int], config: bytes, failed: list[tuple[int, str]] | None = None
) -> Point:
    return Point(
        id="20250101T000000Z-0123abcd",
        job_id="j",
        vcenter="vc",
        vm_uuid="u",
        vm_moref="vm-1",
        vm_name="db01",
        vm_config=config,
        status="complete",
        snapshot_time=0.0,
        created=0.0,
        chunk_size=2**20,
        disks=[PointDisk(k, c, "", "", {}, 1, 0, 1) for k, c in disks.items()],
        failed_disks=failed or [],
    )


def target() -> Target:
    pg = vim.dvs.DistributedVirtualPortgroup("dvportgroup-9")
    prod = vim.dvs.DistributedVirtualPortgroup("dvportgroup-20")
    return Target(
        datacenter=vim.Datacenter("datacenter-1"),
        dc_path="DC",
        datastore=vim.Datastore("datastore-1"),
        datastore_name="restore ds",
        host=vim.HostSystem("host-1"),
        host_name="esx1",
        pool=vim.ResourcePool("resgroup-1"),
        folder=vim.Folder("group-v1"),
        networks={"VM Network": vim.Network("network-1"), "Prod": prod, "pg9": pg},
        portgroups={"dvportgroup-9": (pg, "new-switch"), "dvportgroup-20": (prod, "new-switch")},
        vm_names=set(),
    )


def test_parse_reads_what_restore_needs() -> None:
    cfg = vm_config.parse(saved_config())
    assert (cfg.name, cfg.guest_id, cfg.firmware, cfg.version) == (
        "db01",
        "rhel9_64Guest",
        "efi",
        "vmx-19",
    )
    assert (cfg.num_cpu, cfg.cores_per_socket, cfg.memory_mb) == (8, 4, 16384)
    assert cfg.efi_secure_boot is True and cfg.cpu_hot_add is True and cfg.memory_hot_add is False
    assert [(c.key, c.kind, c.bus) for c in cfg.controllers] == [
        (200, "ide", 0),
        (201, "ide", 1),
        (1000, "scsi", 0),
        (1001, "scsi", 2),
        (15000, "sata", 0),
        (31000, "nvme", 1),
    ]
    assert cfg.controller(1001).shared_bus == "physicalSharing"
    d = {x.key: x for x in cfg.disks}
    assert d[2001].capacity == 3 * 2**20 + 512 and d[2001].unit_number == 5
    assert [n.backing for n in cfg.nics] == ["network", "network", "dvport", "network"]
    assert cfg.nics[2].portgroup_key == "dvportgroup-9"
    assert cfg.other_devices == ["CD/DVD drive 1"]
    assert "8 vCPU (4/socket), 16384 MiB, efi" in cfg.summary()
    assert "31000" not in cfg.summary() and "32000@nvme1:0" in cfg.summary()
    assert vm_config.disk_controllers(saved_config())[2001] == {
        "controller_type": "ParaVirtualSCSIController",
        "controller_bus": 2,
    }


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "no saved VM configuration"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"hardware": {}}', "no hardware.device"),
        (b'{"hardware": {"device": [], "numCPU": 0, "memoryMB": 4}}', "numCPU=0"),
        (b'{"hardware": {"device": [{"x": 1}], "numCPU": 1, "memoryMB": 4}}', "has no key"),
    ],
)
def test_parse_rejects_unusable_configs(data: bytes, message: str) -> None:
    with pytest.raises(vm_config.VmConfigError, match=message):
        vm_config.parse(data)
    assert vm_config.disk_controllers(data) == {}
    listed = vm_config.describe_point_config(data)
    assert listed["vm_config"] is None and listed["vm_config_error"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@example(hw={"numCPU": float("inf")}, top={}, devices=[])  # once an OverflowError
@given(
    hw=st.dictionaries(
        st.sampled_from(["device", "numCPU", "memoryMB", "numCoresPerSocket"]), json_values
    ),
    top=st.dictionaries(
        st.sampled_from(["name", "guestId", "firmware", "bootOptions"]), json_values
    ),
    devices=st.lists(
        st.fixed_dictionaries(
            {
                "key": st.integers() | st.text(max_size=3),
                "_vimtype": st.sampled_from(
                    [
                        "vim.vm.device.VirtualDisk",
                        "vim.vm.device.VirtualVmxnet3",
                        "vim.vm.device.VirtualAHCIController",
                        "vim.vm.device.VirtualCdrom",
                        "x",
                    ]
                ),
            },
            optional={
                "backing": json_values,
                "controllerKey": json_values,
                "busNumber": json_values,
                "capacityInBytes": json_values,
                "deviceInfo": json_values,
                "connectable": json_values,
            },
        ),
        max_size=5,
    ),
)
def test_parse_never_fails_other_than_cleanly(
    hw: dict[str, Any], top: dict[str, Any], devices: list[dict[str, Any]]
) -> None:
    doc = dict(top)
    doc["hardware"] = dict(hw)
    if devices:
        doc["hardware"]["device"] = devices
    data = json.dumps(doc).encode()
    try:
        cfg = vm_config.parse(data)
    except vm_config.VmConfigError:
        return
    assert cfg.num_cpu > 0 and cfg.memory_mb > 0
    cfg.summary()
    json.dumps(cfg.to_dict())


def test_build_spec_recreates_controllers_disks_and_networks() -> None:
    cfg = vm_config.parse(saved_config())
    caps = {2000: 10 * 2**20, 2001: 3 * 2**20 + 512, 16000: 2**20, 32000: 2**20, 3000: 2**20}
    pt = point(caps, saved_config(), failed=[(2002, "independent disk")])
    plan = build_spec(cfg, pt, "db01-restored", target())
    spec = plan.spec
    assert (spec.name, spec.numCPUs, spec.numCoresPerSocket, spec.memoryMB) == (
        "db01-restored",
        8,
        4,
        16384,
    )
    assert (spec.guestId, spec.firmware, spec.version) == ("rhel9_64Guest", "efi", "vmx-19")
    assert spec.bootOptions.efiSecureBootEnabled is True and spec.cpuHotAddEnabled is True
    assert spec.files.vmPathName == "[restore ds]"
    devs = [c.device for c in spec.deviceChange]
    ctrls = {d.key: d for d in devs if isinstance(d, D.VirtualController)}
    # IDE controllers are vSphere's own: never in the spec
    assert sorted((type(c).__name__, c.busNumber) for c in ctrls.values()) == [
        ("vim.vm.device.ParaVirtualSCSIController", 2),
        ("vim.vm.device.VirtualAHCIController", 0),
        ("vim.vm.device.VirtualLsiLogicController", 0),
        ("vim.vm.device.VirtualNVMEController", 1),
    ]
    assert all(k < 0 for k in ctrls)
    pv = next(c for c in ctrls.values() if isinstance(c, D.ParaVirtualSCSIController))
    assert pv.sharedBus == "physicalSharing"
    disks = [d for d in devs if isinstance(d, D.VirtualDisk)]
    placed = {}
    for d in disks:
        kind = (
            "IDE" if d.controllerKey in IDE_KEYS.values() else type(ctrls[d.controllerKey]).__name__
        )
        placed[(kind, d.unitNumber)] = d.capacityInBytes
        assert d.backing.thinProvisioned is True and d.backing.fileName == "[restore ds]"
    assert placed == {
        ("vim.vm.device.VirtualLsiLogicController", 0): 10 * 2**20,
        ("vim.vm.device.ParaVirtualSCSIController", 5): 3 * 2**20 + 512,
        ("vim.vm.device.VirtualAHCIController", 2): 2**20,
        ("vim.vm.device.VirtualNVMEController", 0): 2**20,
        ("IDE", 1): 2**20,
    }
    assert next(d for d in disks if d.controllerKey == 201)
    creates = [c for c in spec.deviceChange if isinstance(c.device, D.VirtualDisk)]
    assert all(c.fileOperation == "create" for c in creates)
    nics = [d for d in devs if isinstance(d, D.VirtualEthernetCard)]
    assert len(nics) == 3  # DMZ is missing on the target
    by_type = {type(n).__name__.rsplit(".", 1)[-1]: n for n in nics}
    std = next(n for n in nics if isinstance(n.backing, D.VirtualEthernetCard.NetworkBackingInfo))
    assert std.backing.deviceName == "VM Network" and std.backing.network._moId == "network-1"
    assert std.addressType == "generated" and not std.macAddress
    dv = by_type["VirtualE1000e"].backing.port
    assert (dv.switchUuid, dv.portgroupKey) == ("new-switch", "dvportgroup-9")
    # a standard backing whose name is a distributed port group on the target
    prod = [
        n
        for n in nics
        if isinstance(n.backing, D.VirtualEthernetCard.DistributedVirtualPortBackingInfo)
    ]
    assert {n.backing.port.portgroupKey for n in prod} == {"dvportgroup-9", "dvportgroup-20"}
    notes = "\n".join(plan.notes)
    assert "disk 2002" in notes and "independent disk" in notes
    assert "Network adapter 2" in notes and "'DMZ'" in notes
    assert "CD/DVD drive 1 not recreated" in notes
    assert {p.saved_key for p in plan.disks} == set(caps)


def test_build_spec_needs_a_disk_with_data() -> None:
    cfg = vm_config.parse(saved_config())
    with pytest.raises(RestoreVmError, match="no disk of the saved configuration has data"):
        build_spec(cfg, point({}, saved_config()), "x", target())


def test_flat_file_names() -> None:
    assert flat_file("[ds 1] my vm/my vm_1.vmdk") == "my vm/my vm_1-flat.vmdk"
    assert flat_file("[ds] a/b-flat.vmdk") == "a/b-flat.vmdk"
    with pytest.raises(RestoreVmError):
        flat_file("a/b.vmdk")
