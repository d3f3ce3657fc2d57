"""TLS for connections to vCenter/ESXi: verified by default (system store or a CA bundle), or
pinned to a SHA-256 thumbprint; turning checks off must be explicit and is logged."""

from __future__ import annotations

import hashlib
import hmac
import ssl

from common.logging import get_logger
from proxy_worker.errors import TlsError
from proxy_worker.settings import VCenterAccess

log = get_logger(__name__)


def ssl_context(vc: VCenterAccess) -> ssl.SSLContext:
    if vc.thumbprint or vc.insecure:
        # Chain checks are replaced by the pin (checked after the handshake, before any
        # request is sent) or explicitly turned off.
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if vc.insecure and not vc.thumbprint:
            log.warning("tls_verification_disabled", url=vc.url)
        return ctx
    try:
        return ssl.create_default_context(cafile=vc.ca_bundle or None)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"cannot load CA bundle {vc.ca_bundle!r}: {exc}") from exc


def normalize_thumbprint(thumb: str) -> str:
    return thumb.replace(":", "").lower()


def check_pin(der_cert: bytes | None, thumbprint: str, where: str) -> None:
    """Raise TlsError unless the peer certificate matches the SHA-256 (or SHA-1) pin."""
    if not thumbprint:
        return
    if not der_cert:
        raise TlsError(f"{where}: server sent no certificate")
    want = normalize_thumbprint(thumbprint)
    algo = hashlib.sha1 if len(want) == 40 else hashlib.sha256
    got = algo(der_cert).hexdigest()
    if not hmac.compare_digest(got, want):
        raise TlsError(f"{where}: certificate thumbprint {got} does not match the pinned {want}")
