"""TLS to the broker: the client context, the plain-text refusal, certificate errors.

``amqps://`` verifies the broker's chain against ``broker.ca_file`` (a PEM bundle; the
system store when unset) and its host name. ``broker.require_tls`` refuses ``amqp://`` to
anything but loopback, so a production config cannot silently fall back to clear text.
A certificate that does not verify is a configuration error, not a network blip:
:func:`certificate_failure` finds it in pika's wrapped errors so the connection loops
stop retrying and raise :class:`BrokerCertificateError` instead.
"""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path
from urllib.parse import urlsplit

from common.redact import redact_url


class BrokerCertificateError(RuntimeError):
    """The broker's certificate failed verification (wrong CA, host name, expired...)."""


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_url(url: str, require_tls: bool) -> None:
    """Refuse ``amqp://`` to a non-loopback host when TLS is required."""
    parts = urlsplit(url)
    if require_tls and parts.scheme == "amqp" and not is_loopback(parts.hostname or ""):
        raise ValueError(
            f"broker.require_tls is set but broker.url {redact_url(url)!r} is plain amqp:// "
            "to a non-loopback host: use amqps:// (port 5671) and broker.ca_file"
        )


def client_context(ca_file: str | None) -> ssl.SSLContext:
    """A context that verifies the chain (against ``ca_file`` if given) and the host name."""
    if ca_file is not None:
        path = Path(ca_file)
        if not path.is_file():
            raise ValueError(f"broker.ca_file {ca_file!r} does not exist or is not a file")
        try:
            ctx = ssl.create_default_context(cafile=str(path))
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"broker.ca_file {ca_file!r} is not a PEM CA bundle: {exc}") from exc
    else:
        ctx = ssl.create_default_context()
    # create_default_context already sets both; say so here as this is the defence.
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def certificate_failure(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification error inside ``exc`` (pika wraps it in its own)."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        e = todo.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ssl.SSLCertVerificationError):
            return e
        todo += [e.__cause__, e.__context__, *e.args]
        # pika's connector errors keep the underlying error as .exception
        todo.append(getattr(e, "exception", None))
        todo += list(getattr(e, "exceptions", None) or ())
    return None


def certificate_error(
    exc: BaseException, host: str, port: int, ca_file: str | None
) -> BrokerCertificateError | None:
    """A clear error naming the broker and the CA, if ``exc`` is a certificate failure."""
    cause = certificate_failure(exc)
    if cause is None:
        return None
    reason = cause.verify_message or cause.reason or str(cause)
    ca = f"broker.ca_file {ca_file!r}" if ca_file else "the system CA store (broker.ca_file unset)"
    err = BrokerCertificateError(
        f"broker {host}:{port}: certificate verify failed: {reason} (verified against {ca})"
    )
    err.__cause__ = cause
    return err
