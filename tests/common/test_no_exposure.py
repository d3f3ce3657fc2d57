"""Nothing exposed by default: /metrics of a real role process listens on loopback
unless configured, and broker and vCenter passwords appear in no repr and no error."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.amqp import BrokerParams
from common.redact import redact_url
from proxy_worker.settings import VCenterAccess
from tests.repository.test_stream_bounds import _writer

SECRET = "s3cr3t-pw"


def _listening(port: int) -> list[str]:
    """Local addresses (hex, as /proc/net/tcp shows them) listening on ``port``."""
    out = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, _, hexport = local.partition(":")
        if state == "0A" and int(hexport, 16) == port:
            out.append(addr)
    return out


@pytest.mark.integration
def test_metrics_of_a_role_listen_on_loopback_by_default(
    broker: BrokerParams, tmp_path: Path
) -> None:
    with _writer(broker, tmp_path) as w:
        assert w.metric("vmbackup_writer_chunk_streams") == 0  # it does serve /metrics
        assert _listening(w.metrics_port) == ["0100007F"]  # 127.0.0.1 only


def test_broker_params_never_show_the_password() -> None:
    params = BrokerParams(url=f"amqp://vmbackup:{SECRET}@rabbit:5672/%2F", password=SECRET)
    for text in (repr(params), str(params), f"{params}", repr([params])):
        assert SECRET not in text
        assert "amqp://vmbackup:***@rabbit:5672/%2F" in text
    bad = BrokerParams(url=f"http://vmbackup:{SECRET}@rabbit/", password=SECRET)
    with pytest.raises(ValueError, match="must start with amqp") as exc:
        bad.pika_params("test")
    assert SECRET not in str(exc.value) and "http://vmbackup:***@rabbit/" in str(exc.value)


def test_vcenter_access_never_shows_the_password() -> None:
    vc = VCenterAccess(
        name="vc1", url=f"https://admin:{SECRET}@vc.example/sdk", user="admin", password=SECRET
    )
    for text in (repr(vc), str(vc), repr({"vc": vc})):
        assert SECRET not in text and "https://admin:***@vc.example/sdk" in text
    with pytest.raises(ValueError, match="must start with https") as exc:
        VCenterAccess(name="vc1", url=f"ftp://admin:{SECRET}@vc.example/", password=SECRET)
    assert SECRET not in str(exc.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://guest@127.0.0.1:5672/%2F", "amqp://guest@127.0.0.1:5672/%2F"),
        ("amqps://u:p%40ss@h:5671/v", "amqps://u:***@h:5671/v"),
        ("https://a:b@[::1]:443/sdk?x=1", "https://a:***@[::1]:443/sdk?x=1"),
        ("https://vc.example/sdk", "https://vc.example/sdk"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_a_vcenter_url_with_a_password_is_never_printed() -> None:
    """A refused vCenter (nothing listens there) names the URL without its password."""
    from common.vcenter_session import Endpoint, Session, VCenterError

    url = "https://admin:s3cret-pw@127.0.0.1:9/sdk"
    ep = Endpoint("vc", url, "admin", "x", insecure=True, timeout_s=5.0, retries=0)
    with pytest.raises(VCenterError) as err:
        Session(ep).connect()
    assert "s3cret-pw" not in str(err.value) and "admin:***@127.0.0.1:9" in str(err.value)
    plain = Endpoint("vc", "http://admin:s3cret-pw@127.0.0.1:9/sdk", "admin", "x")
    with pytest.raises(VCenterError) as err:
        Session(plain)
    assert "s3cret-pw" not in str(err.value)
