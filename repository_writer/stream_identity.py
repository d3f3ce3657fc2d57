"""The key and certificate a writer's chunk stream shows over TLS.

Made afresh at every start and never written anywhere lasting: proxies trust the
certificate by the fingerprint the writer hands out in its have-replies (through the
broker, with the stream's token), so there is no CA to run and nothing to rotate; a
restarted writer simply advertises a new fingerprint.
"""

from __future__ import annotations

import datetime
import os
import ssl
import tempfile
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from common.chunk_stream.tls_socket import server_context
from common.tls_pin import fingerprint


@dataclass(frozen=True)
class StreamIdentity:
    context: ssl.SSLContext
    fingerprint: str  # hex SHA-256 of the certificate (DER)


def make_identity(name: str) -> StreamIdentity:
    """A P-256 key and a self-signed certificate naming the writer, loaded into a TLS 1.3
    server context (through a private temporary directory removed at once: OpenSSL
    loads keys from files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"vmbackup writer {name}"[:64])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    with tempfile.TemporaryDirectory(prefix="vmbackup-stream-") as d:
        certfile, keyfile = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        with open(certfile, "wb") as fh:
            fh.write(cert.public_bytes(serialization.Encoding.PEM))
        fd = os.open(keyfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        ctx = server_context(certfile, keyfile)
    return StreamIdentity(ctx, fingerprint(der))
