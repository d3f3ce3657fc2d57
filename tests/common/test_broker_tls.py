"""amqps:// to a real RabbitMQ TLS listener (a second node this module starts): roles
connect with broker.ca_file = the broker's CA, and refuse a broker whose certificate is
from another CA or for another host name, with a clear error and nothing sent."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from common import amqp
from common import messages as m
from common.amqp import EXCHANGE_SHARDS, BrokerParams, Consumer, Publisher, ReplyQueue
from common.broker_tls import BrokerCertificateError
from common.config import ConfigError
from common.sharding import shard_of, shard_routing_key
from repository.repository import Repository
from tests.common.test_amqp import wait_until
from tests.tls_broker import TestCA, TlsBroker, issue_server_cert, make_ca, start_tls_broker
from vmbackup.config_schema import load_config

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
Q = "vmbackup.tasks.host.esx-1"
USER, PASSWORD, VHOST = "vmb-tls", "tls-" + uuid.uuid4().hex, "vmbackup-tls"


@dataclass
class Lab:
    broker: TlsBroker
    ca: TestCA
    other_ca: TestCA
    directory: Path

    def params(self, ca_file: Path | None, host: str = "localhost") -> BrokerParams:
        return BrokerParams(
            url=self.broker.url(USER, VHOST, host),
            password=PASSWORD,
            ca_file=None if ca_file is None else str(ca_file),
            require_tls=True,
            heartbeat=10,
            reconnect_max=1.0,
        )

    def depth(self, queue: str) -> int:
        out = self.broker.ctl("list_queues", "-p", VHOST, "name", "messages", "--no-table-headers")
        rows = dict(line.split("\t") for line in out.strip().splitlines() if "\t" in line)
        return int(rows[queue])


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    d = Path(tempfile.mkdtemp(prefix="vmbtls-"))
    ca, other = make_ca(d, "vmbackup-test-ca"), make_ca(d, "another-ca")
    # Only the name "localhost": 127.0.0.1 is then a host name that does not match.
    cert, key = issue_server_cert(ca, d, ["localhost"])
    broker = start_tls_broker(d / "node", cert, key, ca.cert_path)
    try:
        # Measured here ~7 s on 2 shared cores; the module stays well under 60 s.
        assert broker.startup_seconds < 45, broker.startup_seconds
        broker.add_user(USER, PASSWORD, VHOST)
        yield Lab(broker, ca, other, d)
    finally:
        broker.stop()
        shutil.rmtree(d, ignore_errors=True)


def event(i: int) -> m.JobEvent:
    return m.JobEvent(job_id="job", event="e", vm="vm", disk_key=i, ts=1.0)


def test_publisher_and_consumer_exchange_messages_over_amqps(lab: Lab) -> None:
    params = lab.params(lab.ca.cert_path)
    amqp.declare_topology(params, task_keys=["host.esx-1"])
    sent = [event(i) for i in range(5)]
    with Publisher(params) as pub:
        pub.flush([pub.publish(amqp.EXCHANGE_TASKS, "host.esx-1", msg) for msg in sent])
    got: list[m.Message] = []
    c = Consumer(params, [Q], lambda msg, _d: got.append(msg), workers=1).start()
    try:
        wait_until(lambda: len(got) == len(sent), what="the messages over amqps")
    finally:
        c.stop()
    assert got == sent
    assert c.error is None
    # The broker saw these connections as TLS ones.
    conns = lab.broker.ctl("list_connections", "user", "ssl", "--no-table-headers")
    assert all(line.split("\t")[1] == "true" for line in conns.strip().splitlines()), conns


@pytest.mark.parametrize("case", ["other-ca", "host-name"])
def test_a_broker_certificate_that_does_not_verify_is_refused(lab: Lab, case: str) -> None:
    if case == "other-ca":
        params, why = lab.params(lab.other_ca.cert_path), "self-signed certificate"
    else:  # the right CA, but the certificate is for "localhost", not 127.0.0.1
        params, why = lab.params(lab.ca.cert_path, host="127.0.0.1"), "mismatch"
    amqp.declare_topology(lab.params(lab.ca.cert_path), task_keys=["host.esx-1"])
    before = lab.depth(Q)
    host_port = f"{params.host_port()[0]}:{params.host_port()[1]}"

    with pytest.raises(BrokerCertificateError) as blocking:
        amqp.open_blocking(params, "test-bad-cert")
    assert "certificate verify failed" in str(blocking.value)
    assert host_port in str(blocking.value) and why in str(blocking.value)

    # The publisher fails the message and stops retrying; nothing reached the broker.
    pub = Publisher(params)
    with pytest.raises(BrokerCertificateError, match="certificate verify failed"):
        # a future that fails, or at once when the publisher already gave up (its
        # connection thread may refuse the certificate before this line runs)
        pub.publish(amqp.EXCHANGE_TASKS, "host.esx-1", event(99)).result(timeout=30)
    with pytest.raises(BrokerCertificateError):
        pub.publish(amqp.EXCHANGE_TASKS, "host.esx-1", event(100))
    pub._thread.join(timeout=10)
    assert not pub._thread.is_alive(), "the publisher keeps retrying a bad certificate"
    pub.close()
    assert lab.depth(Q) == before

    # Waiting for a connection gives the error too, not a time-out.
    waiting = Publisher(params)
    with pytest.raises(BrokerCertificateError):
        waiting.wait_ready(60)
    waiting.close()
    replies = ReplyQueue(params)
    with pytest.raises(BrokerCertificateError):
        _ = replies.name
    replies.close()

    # The consumer ends with the error instead of reconnecting forever.
    c = Consumer(params, [Q], lambda _msg, _d: None, workers=1).start()
    assert c._thread is not None
    c._thread.join(timeout=30)
    assert not c._thread.is_alive(), "the consumer keeps retrying a bad certificate"
    assert isinstance(c.error, BrokerCertificateError)
    assert host_port in str(c.error)
    assert not c.ready.is_set()


def writer_env(lab: Lab, repo: Path, ca_file: Path) -> dict[str, str]:
    return {
        **os.environ,
        "VMBACKUP_BROKER__URL": lab.broker.url(USER, VHOST),
        "VMBACKUP_BROKER__PASSWORD": PASSWORD,
        "VMBACKUP_BROKER__CA_FILE": str(ca_file),
        "VMBACKUP_BROKER__REQUIRE_TLS": "true",
        "VMBACKUP_BROKER__N_SHARDS": "4",
        "VMBACKUP_REPOSITORY__PATH": str(repo),
        "VMBACKUP_METRICS__PORT": "0",
        "VMBACKUP_LOG__FORMAT": "json",
    }


def test_writer_role_serves_over_amqps_and_refuses_another_ca(lab: Lab) -> None:
    repo = Repository.init(lab.directory / f"repo-{uuid.uuid4().hex[:6]}", chunk_size=256 * 1024)
    cmd = [sys.executable, "-m", "vmbackup", "writer"]

    # Another CA: the writer exits at once with the reason, instead of retrying forever.
    bad = subprocess.run(
        cmd,
        env=writer_env(lab, repo.path, lab.other_ca.cert_path),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2, bad.stdout[-2000:] + bad.stderr[-2000:]
    assert "certificate verify failed" in bad.stderr
    assert f"localhost:{lab.broker.port}" in bad.stderr

    # The right CA: the writer declares its queues and answers a have-query over amqps.
    proc = subprocess.Popen(
        cmd,
        env=writer_env(lab, repo.path, lab.ca.cert_path),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    params = lab.params(lab.ca.cert_path)
    pub, replies = Publisher(params), ReplyQueue(params)
    try:
        ids = [os.urandom(32) for _ in range(2)]
        shard = shard_of(ids[0], 4)
        deadline = time.monotonic() + 30
        while True:  # the shard queues exist once the writer declared them
            q = uuid.uuid4().hex
            fut = replies.expect(q)
            try:
                pub.publish_sync(
                    EXCHANGE_SHARDS,
                    shard_routing_key(shard),
                    m.HaveQuery(q, replies.name, ids),
                    persistent=False,
                )
                rep = fut.result(timeout=10)
                break
            except Exception:
                replies.forget(q)
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.3)
        assert isinstance(rep, m.HaveReply) and rep.present == [False, False]
    finally:
        replies.close()
        pub.close()
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out.decode()[-2000:]


def coordinator_config(lab: Lab, repo: Path, ca_file: Path) -> Path:
    path = lab.directory / f"coordinator-{ca_file.stem}.toml"
    # No vCenter answers (port 9): the coordinator logs that and still starts its daemon.
    path.write_text(
        f"""[broker]
url = "{lab.broker.url(USER, VHOST)}"
password = "{PASSWORD}"
ca_file = "{ca_file}"
require_tls = true
[metrics]
port = 0
[log]
format = "json"
[repository]
path = "{repo}"
[[vcenters]]
name = "vc1"
url = "https://127.0.0.1:9/sdk"
user = "backup"
password = "unused"
"""
    )
    return path


def test_coordinator_role_over_amqps_and_refuses_another_ca(lab: Lab) -> None:
    repo = Repository.init(lab.directory / f"repo-{uuid.uuid4().hex[:6]}", chunk_size=256 * 1024)
    cmd = [sys.executable, "-m", "vmbackup", "coordinator", "--config"]
    bad = subprocess.run(
        [*cmd, str(coordinator_config(lab, repo.path, lab.other_ca.cert_path))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert "cannot start: BrokerCertificateError" in bad.stderr
    assert f"localhost:{lab.broker.port}: certificate verify failed" in bad.stderr

    proc = subprocess.Popen(
        [*cmd, str(coordinator_config(lab, repo.path, lab.ca.cert_path))],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # ends if the process exits
            seen.append(line)
            if "coordinator_started" in line:
                break
    finally:
        proc.terminate()
        rest, _ = proc.communicate(timeout=60)
    assert any("coordinator_started" in line for line in seen), "".join(seen)[-2000:] + rest
    assert proc.returncode == 0, rest[-2000:]


def test_require_tls_refuses_plain_amqp_to_a_remote_broker(tmp_path: Path) -> None:
    cfg = tmp_path / "vmbackup.toml"
    cfg.write_text(
        '[broker]\nurl = "amqp://vmbackup@rabbitmq.vmbackup.svc:5672/vmbackup"\n'
        "require_tls = true\n"
    )
    with pytest.raises(ConfigError, match=r"require_tls.*amqp://"):
        load_config(cfg)
    # Loopback stays allowed (a sidecar or a test broker); TLS is what is asked elsewhere.
    cfg.write_text('[broker]\nurl = "amqp://guest@127.0.0.1:5672/%2F"\nrequire_tls = true\n')
    assert load_config(cfg).broker.require_tls
    params = BrokerParams(url="amqp://u@10.0.0.5:5672/v", require_tls=True)
    with pytest.raises(ValueError, match="require_tls"):
        params.pika_params("x")


def test_a_missing_or_bad_ca_file_is_named(tmp_path: Path) -> None:
    url = "amqps://u@localhost:5671/v"
    with pytest.raises(ValueError, match=r"broker\.ca_file .*does not exist"):
        BrokerParams(url=url, ca_file=str(tmp_path / "nope.crt")).pika_params("x")
    junk = tmp_path / "junk.crt"
    junk.write_text("not a certificate\n")
    with pytest.raises(ValueError, match=r"broker\.ca_file .*not a PEM CA bundle"):
        BrokerParams(url=url, ca_file=str(junk)).pika_params("x")
