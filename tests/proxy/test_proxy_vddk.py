"""The production nbdkit vddk command line (VDDK cannot run here: test what is built)."""

from __future__ import annotations

import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from common.snapshot_disk import SnapshotDisk
from proxy_worker.errors import ConfigError, TaskError
from proxy_worker.settings import NbdSettings, ProxySettings, VCenterAccess, VCenterDirectory
from proxy_worker.transports.nbd import NbdTransport
from proxy_worker.transports.vddk import vddk_command

SHA256 = ":".join(["ab"] * 32)
SHA1 = ":".join(["0f"] * 20)
SRC = SnapshotDisk(
    vcenter="vc1",
    datacenter="DC 1",
    host="esx-1",
    datastore="datastore 1",
    vm_moref="vm-123",
    snapshot_moref="snapshot-45",
    disk_file="[datastore 1] my vm/my vm_1.vmdk",
    capacity=1 << 30,
)


def _vc(**kw: object) -> VCenterAccess:
    base: dict[str, object] = {
        "name": "vc1",
        "url": "https://vc1.example.com/sdk",
        "user": "backup@vsphere.local",
        "password": "s3cret",
        "thumbprint": SHA256,
    }
    return VCenterAccess(**{**base, **kw})  # type: ignore[arg-type]


def test_exact_command_line() -> None:
    nbd = NbdSettings(vddk_libdir="/opt/vddk", vddk_transports="hotadd:nbdssl:nbd")
    argv = vddk_command(SRC, _vc(), nbd, "/run/secrets/vc1")
    assert argv == [
        "nbdkit",
        "-s",
        "--exit-with-parent",
        "-r",
        "vddk",
        "libdir=/opt/vddk",
        "server=vc1.example.com",
        "user=backup@vsphere.local",
        "password=+/run/secrets/vc1",
        f"thumbprint={SHA256}",
        "vm=moref=vm-123",
        "snapshot=snapshot-45",
        "transports=hotadd:nbdssl:nbd",
        "file=[datastore 1] my vm/my vm_1.vmdk",
    ]
    assert "s3cret" not in " ".join(argv)


def test_restore_vm_opens_the_new_disk_writable_and_without_a_snapshot() -> None:
    """restore-vm --transport nbd: the disk of the VM it just created, no -r, no snapshot=."""
    nbd = NbdSettings(vddk_libdir="/opt/vddk", vddk_transports="nbdssl")
    new_disk = replace(SRC, vm_moref="vm-900", snapshot_moref="")
    argv = vddk_command(new_disk, _vc(), nbd, "/run/secrets/vc1", write=True)
    assert argv == [
        "nbdkit",
        "-s",
        "--exit-with-parent",
        "vddk",
        "libdir=/opt/vddk",
        "server=vc1.example.com",
        "user=backup@vsphere.local",
        "password=+/run/secrets/vc1",
        f"thumbprint={SHA256}",
        "vm=moref=vm-900",
        "transports=nbdssl",
        "file=[datastore 1] my vm/my vm_1.vmdk",
    ]
    with pytest.raises(TaskError, match="vm_moref"):
        vddk_command(replace(new_disk, vm_moref=""), _vc(), nbd, "/pw", write=True)
    t = NbdTransport(ProxySettings(nbd=nbd), VCenterDirectory([_vc()]))
    try:
        assert "-r" not in t.command(new_disk, write=True)
        assert "-r" in t.command(SRC)
    finally:
        t.close()


def test_port_config_and_vddk_thumbprint() -> None:
    nbd = NbdSettings(vddk_config="/etc/vddk.conf", vddk_thumbprints={"vc1": SHA1})
    argv = vddk_command(SRC, _vc(url="https://10.0.0.5:8443"), nbd, "pw")
    assert "server=10.0.0.5" in argv and "port=8443" in argv
    assert "config=/etc/vddk.conf" in argv
    assert f"thumbprint={SHA1}" in argv
    assert argv[-1] == "file=[datastore 1] my vm/my vm_1.vmdk"
    assert argv[argv.index("password=+" + os.path.abspath("pw"))]


def test_missing_pieces_are_named() -> None:
    with pytest.raises(ConfigError, match="thumbprint"):
        vddk_command(SRC, _vc(thumbprint=""), NbdSettings(), "/pw")
    with pytest.raises(ConfigError, match="user and a password"):
        vddk_command(SRC, _vc(user=""), NbdSettings(), "/pw")
    with pytest.raises(TaskError, match="snapshot_moref"):
        vddk_command(replace(SRC, snapshot_moref=""), _vc(), NbdSettings(), "/pw")
    with pytest.raises(TaskError, match="disk file"):
        vddk_command(replace(SRC, disk_file="x.vmdk"), _vc(), NbdSettings(), "/p")


def test_transport_builds_vddk_command_with_private_password_file() -> None:
    t = NbdTransport(ProxySettings(), VCenterDirectory([_vc()]))
    argv = t.command(SRC)
    pw = next(a for a in argv if a.startswith("password=+"))[len("password=+") :]
    assert Path(pw).read_text() == "s3cret"
    assert stat.S_IMODE(os.stat(pw).st_mode) == 0o600
    assert t.command(SRC) == argv  # reused, not rewritten per task
    t.close()
    assert not os.path.exists(pw)
    # the config's own secret file is passed as is
    t2 = NbdTransport(ProxySettings(), VCenterDirectory([_vc(password_file="/run/s/vc1")]))
    assert "password=+/run/s/vc1" in t2.command(SRC)


def test_unknown_vcenter() -> None:
    with pytest.raises(ConfigError, match="'vc9'"):
        NbdTransport(ProxySettings(), VCenterDirectory([_vc()])).command(
            replace(SRC, vcenter="vc9")
        )
    # a task naming the vCenter by host name finds it too
    d = VCenterDirectory([_vc()])
    assert d.get("vc1.example.com").name == "vc1"
