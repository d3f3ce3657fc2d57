"""A relay that ends TLS with a certificate of its own sits in front of the lab (a
man in the middle with another key). The coordinator and the proxy's http transport, pinned
to the lab's REAL thumbprint or given a CA bundle that does not sign the relay's
certificate, refuse it before a byte of a request leaves: the relay receives nothing, so
neither the password nor a session cookie. Pinned to the relay's own thumbprint the same
path works (the relay is a working path, and it does see the password then). The proxy
refuses a plain-http vCenter unless ``insecure`` is set, before connecting at all."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from common.snapshot_disk import SnapshotDisk
from coordinator.vcenter import Connection, VCenterError
from lab import Lab, LabSpec
from proxy_worker.errors import ConfigError, TlsError
from proxy_worker.settings import HttpSettings, VCenterAccess, VCenterDirectory
from proxy_worker.transports.http import HttpTransport
from tests.coordinator.conftest import vcenter_settings
from tests.proxy.relay import CuttingRelay
from tests.restore_vm.answering_relay import AnsweringRelay

pytestmark = pytest.mark.integration
MiB = 1 << 20


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    spec = LabSpec(
        clusters=1, hosts_per_cluster=1, vms_per_host=1, disks_per_vm=1, disk_sizes=[2 * MiB]
    )
    with Lab.start(spec) as lab:
        lab.fill_disks(seed=5, block_size=MiB)
        yield lab


@pytest.fixture(scope="module")
def lab_ca(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA bundle that trusts the lab's certificate, and nothing that signs the relay's."""
    path = tmp_path_factory.mktemp("ca") / "lab-ca.pem"
    path.write_text(ssl.get_server_certificate((lab.host, lab.port)))
    return path


@pytest.fixture
def relay(lab: Lab) -> Iterator[AnsweringRelay]:
    r = AnsweringRelay((lab.host, lab.port))
    yield r
    r.close()


def _source(lab: Lab) -> SnapshotDisk:
    vm = lab.vms()[0]
    disk = vm["disks"][0]
    return SnapshotDisk(
        vcenter="lab",
        datacenter=vm["datacenter"],
        host=vm["host"],
        datastore=disk["datastore"],
        vm_moref=vm["moref"],
        snapshot_moref="",
        disk_file=disk["file"],
        capacity=disk["capacity"],
    )


def _coordinator(lab: Lab, url: str, **tls: Any) -> None:
    """The coordinator's connection: connect, log in, read something, log out."""
    with Connection(vcenter_settings(lab, url=url, **tls)).connect() as c:
        assert c.content.about.apiVersion


def _proxy(lab: Lab, url: str, **tls: Any) -> None:
    """The proxy's http transport: log in, read the disk's first MiB over /folder."""
    vc = VCenterAccess(name="lab", url=url, user=lab.user, password=lab.password, **tls)
    t = HttpTransport(HttpSettings(retries=0), VCenterDirectory([vc]))
    source = _source(lab)
    try:
        with t.open(source) as r:
            got = r.read(0, MiB)
    finally:
        t.close()
    vm = lab.vms()[0]
    assert got == lab.read_guest_data(vm["moref"], vm["disks"][0]["key"], 0, MiB)


def _assert_nothing_received(relay: AnsweringRelay | CuttingRelay, lab: Lab) -> None:
    leaked = lab.password.encode() in relay.received
    assert not leaked, f"the relay received the password (in {len(relay.received)} bytes)"
    # no application data at all: no request, no session cookie
    assert len(relay.received) == 0, bytes(relay.received[:300])


ROLES: dict[str, tuple[Callable[..., None], type[Exception]]] = {
    "coordinator": (_coordinator, VCenterError),
    "proxy": (_proxy, TlsError),
}


@pytest.mark.parametrize("role", sorted(ROLES))
def test_a_relay_with_another_certificate_gets_no_byte_when_pinned(
    lab: Lab, relay: AnsweringRelay, role: str
) -> None:
    attempt, error = ROLES[role]
    real = lab.thumbprint.replace(":", "").lower()
    with pytest.raises(error) as exc:
        attempt(lab, relay.url, thumbprint=lab.thumbprint)
    idle = relay.wait_idle()
    _assert_nothing_received(relay, lab)
    assert idle, "a connection to the relay is still open"
    assert relay.connections == 1  # it did reach the relay, and did not try again
    assert relay.handshakes == 1  # the handshake completed; the pin refused it then
    # the message says what was wrong and names both thumbprints: pinned and shown
    assert "does not match the pinned thumbprint" in str(exc.value)
    assert real in str(exc.value) and relay.fingerprint in str(exc.value)


@pytest.mark.parametrize("role", sorted(ROLES))
def test_a_relay_not_signed_by_the_ca_bundle_gets_no_byte(
    lab: Lab, relay: AnsweringRelay, lab_ca: Path, role: str
) -> None:
    attempt, error = ROLES[role]
    with pytest.raises(error, match="certificate verify failed"):
        attempt(lab, relay.url, thumbprint="", ca_bundle=str(lab_ca))
    idle = relay.wait_idle()
    _assert_nothing_received(relay, lab)
    assert idle, "a connection to the relay is still open"
    assert relay.connections == 1
    assert relay.handshakes == 0  # the client broke the handshake off


@pytest.mark.parametrize("role", sorted(ROLES))
def test_the_relay_is_a_working_path_when_its_own_certificate_is_pinned(
    lab: Lab, relay: AnsweringRelay, role: str
) -> None:
    """The positive control: the same relay, trusted, carries the whole exchange (so the
    refusals above are the pin's doing), and it sees the password: what a relay nobody
    checked would have had."""
    attempt, _error = ROLES[role]
    attempt(lab, relay.url, thumbprint=relay.fingerprint)
    assert relay.handshakes >= 1
    assert lab.password.encode() in relay.received, "the relay saw no login"


def test_the_proxy_refuses_plain_http_unless_insecure(lab: Lab) -> None:
    """An http:// vCenter would get the password in clear: refused by the proxy with an
    error naming the setting, before it connects."""
    wire = CuttingRelay((lab.host, lab.port), cut_after=1 << 40, cuts=0)
    vc = VCenterAccess(
        name="lab", url=f"http://127.0.0.1:{wire.port}/sdk", user=lab.user, password=lab.password
    )
    t = HttpTransport(HttpSettings(retries=0), VCenterDirectory([vc]))
    try:
        with pytest.raises(ConfigError, match="plain http needs insecure = true"):
            t.open(_source(lab))
    finally:
        t.close()
        wire.close()
    _assert_nothing_received(wire, lab)
    assert wire.connections == 0


def test_a_pin_that_is_not_sha256_is_refused_by_name(lab: Lab) -> None:
    """A SHA-1 thumbprint (what old VDDK releases want) is no pin for TLS: the proxy says so
    instead of comparing it."""
    sha1 = ":".join(["ab"] * 20)
    vc = VCenterAccess(
        name="lab", url=lab.url, user=lab.user, password=lab.password, thumbprint=sha1
    )
    t = HttpTransport(HttpSettings(retries=0), VCenterDirectory([vc]))
    try:
        with pytest.raises(ConfigError, match=r"thumbprint .* is not a SHA-256"):
            t.open(_source(lab))
    finally:
        t.close()
