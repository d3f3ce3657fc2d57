"""Fixtures shared by the whole suite: real RabbitMQ, isolated per test by a vhost."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, settings

from common.amqp import BrokerParams

# The machines are shared and loaded: no test may fail for being slow, hypothesis's
# included (its deadline and too_slow check measure wall time).
settings.register_profile("shared", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("shared")

if TYPE_CHECKING:  # imported by the fixtures: boto3 only for sessions that use S3
    from repository.s3_storage import S3Storage
    from tests.rgw import Rgw

BROKER_URL = os.environ.get("VMBACKUP_TEST_BROKER", "amqp://guest@127.0.0.1:5672/%2F")


def rabbitmqctl(*args: str, timeout: float = 60) -> str:
    exe = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    res = subprocess.run(
        [exe, "-q", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if res.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {res.stderr.strip()}")
    return res.stdout


def make_vhost(prefix: str = "t") -> str:
    vhost = f"vmbackup-{prefix}-{uuid.uuid4().hex[:10]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    return vhost


def drop_vhost(vhost: str) -> None:
    # Best effort: a leftover test vhost harms nothing.
    with contextlib.suppress(Exception):
        rabbitmqctl("delete_vhost", vhost)


@pytest.fixture
def amqp_vhost() -> Iterator[str]:
    """A fresh RabbitMQ vhost for one test, deleted afterwards."""
    vhost = make_vhost()
    yield vhost
    drop_vhost(vhost)


@pytest.fixture
def broker(amqp_vhost: str) -> BrokerParams:
    """Broker parameters pointing at the test's own vhost (short heartbeat, fast retry)."""
    return BrokerParams(url=BROKER_URL, heartbeat=10, reconnect_max=2.0).with_vhost(amqp_vhost)


@pytest.fixture(scope="module")
def module_broker() -> Iterator[BrokerParams]:
    """Like ``broker`` but shared by a module's tests."""
    vhost = make_vhost("m")
    yield BrokerParams(url=BROKER_URL, heartbeat=10, reconnect_max=2.0).with_vhost(vhost)
    drop_vhost(vhost)


@pytest.fixture(scope="session")
def rgw() -> Iterator[Rgw]:
    """The lab's real Ceph RADOS Gateway, started once a session (tests/rgw.py)."""
    from tests.rgw import session_rgw

    with session_rgw() as gw:
        yield gw


@pytest.fixture
def s3_storage(rgw: Rgw) -> Iterator[S3Storage]:
    """An S3Storage on a fresh bucket of the session's gateway, removed afterwards."""
    from tests.rgw import drop_bucket

    s = rgw.new_bucket()
    yield s
    drop_bucket(s)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers: an S3
    endpoint that times out."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(16)
        yield srv.getsockname()[1]
