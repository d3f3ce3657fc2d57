"""Connections (TLS, login, counting), discovery and the plain simulator, against the lab."""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Iterator
from typing import Any

import pytest

from common.config import Secret
from coordinator import report
from coordinator.discovery import discover
from coordinator.policy import select
from coordinator.settings import PolicySettings
from coordinator.vcenter import Connection, VCenterError
from lab import Lab, LabSpec
from tests.coordinator.conftest import MiB, vcenter_settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    spec = LabSpec(
        clusters=2,
        hosts_per_cluster=2,
        standalone_hosts=1,
        vms_per_host=2,
        disks_per_vm=2,
        odd_names=True,
        disk_sizes=[8 * MiB],
    )
    with Lab.start(spec) as lab:
        yield lab


def test_tls_verified_by_default(lab: Lab) -> None:
    # the lab's certificate is self-signed: with neither pin nor CA it must be refused
    s = vcenter_settings(lab, thumbprint="")
    with pytest.raises(VCenterError, match="TLS check failed"):
        Connection(s).connect()


def test_thumbprint_pin(lab: Lab) -> None:
    wrong = hashlib.sha256(b"not the cert").hexdigest()
    with pytest.raises(VCenterError, match="does not match the pinned thumbprint"):
        Connection(vcenter_settings(lab, thumbprint=wrong)).connect()
    with Connection(vcenter_settings(lab)).connect() as c:  # the right pin, with colons
        assert c.content.about.apiVersion


def test_ca_bundle(lab: Lab, tmp_path: Any) -> None:
    pem = ssl.get_server_certificate((lab.host, lab.port))
    ca = tmp_path / "ca.pem"
    ca.write_text(pem)
    s = vcenter_settings(lab, thumbprint="", ca_bundle=str(ca))
    try:
        with Connection(s).connect() as c:
            assert c.round_trips >= 2
    except VCenterError as exc:
        # a self-signed leaf without a CA flag or the right SAN is refused by OpenSSL:
        # still a verification failure, never a silent pass
        assert "TLS check failed" in str(exc)


def test_insecure_is_explicit(lab: Lab) -> None:
    with pytest.raises(ValueError, match="insecure"):
        vcenter_settings(lab, insecure=True)  # thumbprint given too
    with Connection(vcenter_settings(lab, thumbprint="", insecure=True)).connect() as c:
        assert c.content.about.apiVersion


def test_bad_password(lab: Lab) -> None:
    s = vcenter_settings(lab, password=Secret("wrong", "env TEST_PW"))
    with pytest.raises(VCenterError, match=r"login refused .*password from env TEST_PW"):
        Connection(s).connect()


def test_discovery_placement_and_round_trips(lab: Lab) -> None:
    with Connection(vcenter_settings(lab)).connect() as c:
        inv = discover(c)
        assert len(inv.vms) == len(lab.vms())
        # one view, one page here, destroy: a handful of calls whatever the VM count
        assert inv.round_trips <= 2 + inv.pages
        truth = {v["moref"]: v for v in lab.vms()}
        for vm in inv.vms:
            t = truth[vm.moref]
            assert (vm.name, vm.host, vm.cluster, vm.datacenter) == (
                t["name"],
                t["host"],
                t["cluster"] or "",
                t["datacenter"],
            )
            assert [d.key for d in vm.disks] == [d["key"] for d in t["disks"]]
            assert [d.file for d in vm.disks] == [d["file"] for d in t["disks"]]
            assert [d.datastore for d in vm.disks] == [d["datastore"] for d in t["disks"]]
        clusters = {v.cluster for v in inv.vms}
        assert "" in clusters and len(clusters) == 3  # the standalone host has no cluster
        one = sorted(clusters - {""})[0]
        sel = select(inv.vms, PolicySettings(name="p", clusters=[one]))
        assert sel.selected and all(v.cluster == one for v in sel.selected)


def test_discovery_pages_when_the_page_is_smaller_than_the_inventory(lab: Lab) -> None:
    from pyVmomi import vim, vmodl

    from coordinator.discovery import _PLACEMENT_TYPES, VM_PROPERTIES, retrieve_paged

    with Connection(vcenter_settings(lab)).connect() as c:
        one = discover(c, page_size=10_000)
        assert one.pages == 1
        types = {**_PLACEMENT_TYPES, vim.VirtualMachine: VM_PROPERTIES}
        objects = len(list(retrieve_paged(c, types, 10_000)))
        assert objects > len(lab.vms()) == 10
        before = dict(c.calls)
        paged = discover(c, page_size=3)
        assert paged.pages == -(-objects // 3)  # round trips grow with pages
        assert c.calls["RetrievePropertiesEx"] - before.get("RetrievePropertiesEx", 0) == 1
        assert (
            c.calls["ContinueRetrievePropertiesEx"] - before.get("ContinueRetrievePropertiesEx", 0)
            == paged.pages - 1
        )
        assert paged.round_trips <= 2 + paged.pages
        # the same inventory, whatever the page size
        assert sorted((v.moref, v.name, v.host, v.cluster, v.datacenter) for v in paged.vms) == (
            sorted((v.moref, v.name, v.host, v.cluster, v.datacenter) for v in one.vms)
        )
        assert sorted((v.moref, [d.key for d in v.disks]) for v in paged.vms) == sorted(
            (v.moref, [d.key for d in v.disks]) for v in one.vms
        )

        # a token is good for one continuation; a cancelled one is refused
        pc = c.content.propertyCollector
        view = c.content.viewManager.CreateContainerView(
            c.content.rootFolder, [vim.VirtualMachine], True
        )
        PC = vmodl.query.PropertyCollector
        spec = PC.FilterSpec(
            objectSet=[
                PC.ObjectSpec(
                    obj=view,
                    skip=True,
                    selectSet=[
                        PC.TraversalSpec(name="v", path="view", type=vim.view.ContainerView)
                    ],
                )
            ],
            propSet=[PC.PropertySpec(type=vim.VirtualMachine, pathSet=["name"])],
        )
        res = pc.RetrievePropertiesEx([spec], PC.RetrieveOptions(maxObjects=4))
        assert len(res.objects) == 4 and res.token
        pc.CancelRetrievePropertiesEx(res.token)
        with pytest.raises(vmodl.fault.InvalidArgument):
            pc.ContinueRetrievePropertiesEx(res.token)
        view.DestroyView()


@pytest.fixture(scope="module")
def plain_lab() -> Iterator[Lab]:
    with Lab.start(LabSpec(vms_per_host=1, disk_sizes=[6 * MiB + 4096]), plain=True) as lab:
        yield lab


def test_plain_vcsim_backs_up_whole_disks(plain_lab: Lab, make_env: Any) -> None:
    env = make_env(plain_lab)
    env.start()
    name = plain_lab.vms()[0]["name"]
    plain_lab.write_guest_data(name, 2000, 4096, b"plain" * 100)
    rep = env.run()
    assert rep.status == report.OK, rep.to_text()
    for v in rep.vms:
        (d,) = v.disks
        assert d.mode == "full"
        assert "whole disk: CBT not answered" in d.reason
        assert d.bytes_planned == d.capacity  # never "nothing changed"
    # again: still a full (the plain simulator keeps no changeId)
    rep2 = env.run()
    assert all(v.disks[0].mode == "full" for v in rep2.vms), rep2.to_text()
    assert all(e["removed_at"] for e in plain_lab.snapshot_events())


def test_timeouts_are_retried_with_backoff_then_raised(lab: Lab) -> None:
    s = vcenter_settings(lab, timeout_s=0.3, retries=2, backoff_s=0.01)
    with Connection(s).connect() as c:
        lab.inject(slow_soap_ms=1500, slow_soap_method="RetrievePropertiesEx")
        try:
            before = c.calls["RetrievePropertiesEx"]
            with pytest.raises(TimeoutError):
                c.get_properties(c.content.rootFolder, ["name"])
            assert c.retries == 2
            assert c.calls["RetrievePropertiesEx"] - before == 3  # first try + 2 retries
        finally:
            lab.inject(slow_soap_ms=0, slow_soap_method="")
        assert c.get_properties(c.content.rootFolder, ["name"])["name"]
