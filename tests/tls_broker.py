"""A second, throw-away RabbitMQ node with only a TLS listener, for tests.

The main broker on 5672 is shared by every test run on this machine, so TLS tests never
reconfigure it: :func:`start_tls_broker` starts another node (its own name, ports, data
and log directories in a temporary directory, the certificates the test made) and
:meth:`TlsBroker.stop` stops it. It runs as root with a copy of the system Erlang cookie
in its own HOME, and every ``rabbitmqctl -n`` call here uses that same HOME.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
SYSTEM_COOKIE = Path("/var/lib/rabbitmq/.erlang.cookie")


# --- certificates ----------------------------------------------------------------------


@dataclass(frozen=True)
class TestCA:
    """A self-signed CA (its PEM written to ``cert_path``) that can issue leaf certs."""

    __test__ = False  # not a pytest test class

    name: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    cert_path: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(directory: Path, name: str) -> TestCA:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{name}.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return TestCA(name, key, cert, path)


def issue_server_cert(
    ca: TestCA,
    directory: Path,
    dns_names: list[str],
    ips: Sequence[str] = (),
) -> tuple[Path, Path]:
    """A server certificate for ``dns_names``/``ips`` signed by ``ca``: (cert, key) paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(dns_names[0]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    cert_path = directory / f"{dns_names[0]}.crt"
    key_path = directory / f"{dns_names[0]}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


# --- the node --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class TlsBroker:
    node: str
    port: int
    base: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    startup_seconds: float = 0.0
    users: list[str] = field(default_factory=list)

    def ctl(self, *args: str, timeout: float = 60) -> str:
        res = subprocess.run(
            [str(RABBIT_BIN / "rabbitmqctl"), "-q", "-n", self.node, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            check=False,
        )
        if res.returncode != 0:
            raise RuntimeError(f"rabbitmqctl -n {self.node} {' '.join(args)}: {res.stderr}")
        return res.stdout

    def add_user(self, user: str, password: str, vhost: str) -> None:
        """A real user with full rights on ``vhost`` (created if missing)."""
        self.ctl("add_vhost", vhost)
        self.ctl("add_user", user, password)
        self.ctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        self.users.append(user)

    def url(self, user: str, vhost: str, host: str = "localhost") -> str:
        from urllib.parse import quote

        return f"amqps://{user}@{host}:{self.port}/{quote(vhost, safe='')}"

    def log_tail(self, n: int = 40) -> str:
        logs = sorted((self.base / "log").glob("*.log"))
        if not logs:
            return "(no log)"
        return "\n".join(logs[-1].read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        # The node may already be gone; then only the process group is left.
        with contextlib.suppress(Exception):
            self.ctl("stop", timeout=60)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)
        # The script runs beam as a child in its own session: end that whole group (the
        # node may have come up late, after a failed start, when ``stop`` missed it).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        shutil.rmtree(self.base, ignore_errors=True)


def start_tls_broker(
    base: Path, certfile: Path, keyfile: Path, cacertfile: Path, *, timeout: float = 45.0
) -> TlsBroker:
    """Start a RabbitMQ node listening only on TLS on 127.0.0.1 (a free port)."""
    base.mkdir(parents=True, exist_ok=True)
    home = base / "home"
    home.mkdir(exist_ok=True)
    cookie = home / ".erlang.cookie"
    shutil.copyfile(SYSTEM_COOKIE, cookie)  # rabbitmqctl (ours and the system's) can reach it
    cookie.chmod(0o400)
    node = f"vmbtls-{uuid.uuid4().hex[:8]}@localhost"
    port = free_port()
    conf = base / "rabbitmq.conf"
    conf.write_text(
        "listeners.tcp = none\n"
        f"listeners.ssl.default = 127.0.0.1:{port}\n"
        f"ssl_options.cacertfile = {cacertfile}\n"
        f"ssl_options.certfile = {certfile}\n"
        f"ssl_options.keyfile = {keyfile}\n"
        "ssl_options.verify = verify_none\n"
        "ssl_options.fail_if_no_peer_cert = false\n"
        "management.tcp.port = 0\n"
        "loopback_users = none\n"
    )
    (base / "enabled_plugins").write_text("[].\n")
    (base / "env.conf").write_text("")  # not the system rabbitmq-env.conf (its NODENAME)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "RABBITMQ_NODENAME": node,
        "RABBITMQ_CONF_ENV_FILE": str(base / "env.conf"),
        "RABBITMQ_CONFIG_FILE": str(conf),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
        "RABBITMQ_LOG_BASE": str(base / "log"),
        "RABBITMQ_DIST_PORT": str(free_port()),
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
    }
    t0 = time.monotonic()
    process = subprocess.Popen(
        [str(RABBIT_BIN / "rabbitmq-server")],
        env=env,
        cwd=base,
        stdout=(base / "stdout.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    broker = TlsBroker(node, port, base, env, process)
    deadline = t0 + timeout
    while True:
        # await_startup needs the Erlang node registered first: poll until it is.
        try:
            broker.ctl("await_startup", "--timeout", "10", timeout=20)
            break
        except Exception as exc:
            if process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.5)
                continue
            out = (base / "stdout.log").read_text(errors="replace")[-3000:]
            broker.stop()
            raise RuntimeError(f"TLS RabbitMQ node {node} did not start: {exc}\n{out}") from exc
    broker.startup_seconds = time.monotonic() - t0
    return broker
