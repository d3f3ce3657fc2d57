"""restore-vm, through the real CLI, in front of a relay that ends TLS with a certificate of
its own: pinned to the lab's real thumbprint, or given a CA bundle that does not sign the
relay's certificate, it refuses the relay with a clear error and the relay receives no
byte (neither the password nor anything else); pinned to the relay's own certificate the
same path logs in (the relay is a working path, and it does see the password then)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from tests.restore_vm.answering_relay import AnsweringRelay
from tests.restore_vm.conftest import Env

pytestmark = pytest.mark.integration


def _restore_through(env: Env, relay: AnsweringRelay, config: Path, datastore: str) -> str:
    """restore-vm of the plain VM to vCenter "lab" (the relay); its stderr, having failed."""
    r = env.vmbackup(
        "restore-vm",
        env.plain.point_id,
        "--to",
        "lab",
        "--datastore",
        datastore,
        "--name",
        "never-through-relay",
        config=config,
    )
    assert r.returncode == 1, r.stdout
    return r.stderr


def _assert_nothing_received(relay: AnsweringRelay, env: Env) -> None:
    idle = relay.wait_idle()
    leaked = env.lab.password.encode() in relay.received
    assert not leaked, f"the relay received the password (in {len(relay.received)} bytes)"
    assert len(relay.received) == 0, bytes(relay.received[:300])  # no request at all
    assert idle, "a connection to the relay is still open"
    assert relay.connections >= 1  # restore-vm did come to the relay


def test_restore_vm_refuses_a_relay_when_pinned_to_the_lab(env: Env, tmp_path: Path) -> None:
    relay = AnsweringRelay((env.lab.host, env.lab.port))
    try:
        cfg = env.stack.write_config(
            tmp_path / "pinned.toml", repo=env.repo_path, url=relay.url, timeout_s=20.0, retries=0
        )  # the lab's real thumbprint
        err = _restore_through(env, relay, cfg, env.shared_ds)
        _assert_nothing_received(relay, env)
    finally:
        relay.close()
    assert "refused us" in err and "does not match the pinned thumbprint" in err
    assert env.lab.thumbprint.replace(":", "").lower() in err and relay.fingerprint in err
    assert not env.vms_named("never-through-relay")


def test_restore_vm_refuses_a_relay_its_ca_bundle_does_not_sign(env: Env, tmp_path: Path) -> None:
    ca = tmp_path / "lab-ca.pem"
    ca.write_text(ssl.get_server_certificate((env.lab.host, env.lab.port)))
    relay = AnsweringRelay((env.lab.host, env.lab.port))
    try:
        cfg = env.stack.write_config(
            tmp_path / "ca.toml",
            repo=env.repo_path,
            url=relay.url,
            thumbprint="",
            ca_bundle=str(ca),
            timeout_s=20.0,
            retries=0,
        )
        err = _restore_through(env, relay, cfg, env.shared_ds)
        _assert_nothing_received(relay, env)
        assert relay.handshakes == 0
    finally:
        relay.close()
    assert "refused us" in err and "certificate verify failed" in err


def test_restore_vm_through_the_relay_pinned_to_it_logs_in(env: Env, tmp_path: Path) -> None:
    """The positive control: trusted, the relay carries the login (and sees the password);
    the restore then fails on purpose at a datastore that does not exist, after login."""
    relay = AnsweringRelay((env.lab.host, env.lab.port))
    try:
        cfg = env.stack.write_config(
            tmp_path / "relay.toml",
            repo=env.repo_path,
            url=relay.url,
            thumbprint=relay.fingerprint,
            timeout_s=20.0,
            retries=0,
        )
        err = _restore_through(env, relay, cfg, "NoSuchDS")
        assert env.lab.password.encode() in relay.received, "the relay saw no login"
    finally:
        relay.close()
    assert "datastore 'NoSuchDS' not found" in err
