"""Certificate pins: the SHA-256 thumbprint of a peer's certificate, compared in constant
time, and client TLS contexts that refuse a certificate with another thumbprint inside the
handshake, before whoever uses the connection can send a byte.

The check runs in the TLS socket's own ``do_handshake``, so it holds for every client of
the context (http.client, pyVmomi's pool, anything that calls ``wrap_socket``): a check
left to the caller runs too late when the caller is a library that sends its request as
soon as it is connected, and pyVmomi checks its ``thumbprint`` argument only when chain
verification has failed.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import socket
import ssl

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class PinMismatchError(ssl.SSLCertVerificationError):
    """The peer's certificate is not the one its thumbprint was pinned to (a verification
    failure: never retried as if the network had failed)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def normalize(thumbprint: str) -> str:
    """``AB:CD:...`` or ``abcd...`` -> lower-case hex without separators."""
    return thumbprint.replace(":", "").strip().lower()


def is_sha256(thumbprint: str) -> bool:
    return bool(_SHA256_HEX.fullmatch(normalize(thumbprint)))


def fingerprint(der: bytes) -> str:
    """Hex SHA-256 of a DER certificate."""
    return hashlib.sha256(der).hexdigest()


def check_pin(der: bytes | None, pin: str, where: str) -> None:
    """PinMismatchError unless the certificate ``der`` has the SHA-256 thumbprint ``pin``."""
    want = normalize(pin)
    if not der:
        raise PinMismatchError(f"{where}: the server showed no certificate (pinned {want})")
    got = fingerprint(der)
    if not hmac.compare_digest(got, want):
        raise PinMismatchError(
            f"{where}: certificate SHA-256 {got} does not match the pinned thumbprint {want}"
        )


class _PinnedSocket(ssl.SSLSocket):
    """An SSLSocket whose handshake ends with the pin check (and closes on a mismatch)."""

    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        ctx = self.context
        assert isinstance(ctx, PinnedContext)
        try:
            check_pin(self.getpeercert(binary_form=True), ctx.pin, peer_name(self))
        except PinMismatchError:
            self.close()
            raise


class _PinnedObject(ssl.SSLObject):
    """The same for TLS over memory BIOs (``wrap_bio``: asyncio, chunk_stream/tls_socket.py)."""

    def do_handshake(self) -> None:
        super().do_handshake()
        ctx = self.context
        assert isinstance(ctx, PinnedContext)
        check_pin(self.getpeercert(binary_form=True), ctx.pin, "the server")


class PinnedContext(ssl.SSLContext):
    """A client context that trusts exactly one certificate, by its SHA-256 thumbprint;
    CA chain and host name are not checked (the pin replaces them)."""

    sslsocket_class = _PinnedSocket
    sslobject_class = _PinnedObject
    pin: str


def pinned_context(
    pin: str, minimum_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
) -> PinnedContext:
    want = normalize(pin)
    if not _SHA256_HEX.fullmatch(want):
        raise ValueError(f"thumbprint {pin!r} is not a SHA-256 (64 hex digits)")
    ctx = PinnedContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = minimum_version
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.pin = want
    return ctx


def peer_name(sock: socket.socket) -> str:
    """``host:port`` of the peer, for error messages."""
    try:
        name = sock.getpeername()
    except OSError:
        return "the peer"
    return f"{name[0]}:{name[1]}" if isinstance(name, tuple) else "the peer"
