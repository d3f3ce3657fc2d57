"""One webhook: a POST of a body, tried again on what may pass later, bounded.

Tried again (``retries`` times, the delay doubling from ``backoff_s``, or the receiver's
``Retry-After`` up to a minute): no connection, a timeout, a dropped connection, 429 and
5xx. Never again: a certificate that does not verify, a redirect (a POST is not followed
anywhere), any other status; trying again would meet the same answer.

Headers: ``Content-Type: application/json``, ``X-Vmbackup-Event``, ``X-Vmbackup-Delivery``
(the job id: the same on every attempt, so that a receiver can drop a repeat) and, with
a ``token``, ``<header>: <token>`` and ``X-Vmbackup-Signature: sha256=<hex>``, the
HMAC-SHA256 of the body keyed with the token, which a receiver checks against the bytes
it got. HTTPS is verified (the system CAs or ``ca_file``); HTTPS_PROXY, HTTP_PROXY and
NO_PROXY are honoured. The URL's path may be its secret (Slack): logs and errors show its
scheme and host only (:func:`url_origin`).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from common.logging import get_logger
from common.version import package_version
from coordinator.notify.payload import EVENT
from coordinator.settings import WebhookSettings

log = get_logger(__name__)
MAX_RETRY_AFTER_S = 60.0
MAX_BACKOFF_S = 60.0
SHOWN_BODY = 200  # characters of a refusal's body in the error


@dataclass(frozen=True)
class Outcome:
    ok: bool
    attempts: int
    error: str = ""  # the last attempt's, when not ok


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_args: Any, **_kw: Any) -> None:
        return None  # the 3xx becomes an HTTPError: reported, not followed


def url_origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: what logs may show of it."""
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"
    except ValueError:
        return "(not a URL)"


def signature(token: str, body: bytes) -> str:
    return "sha256=" + hmac.new(token.encode(), body, hashlib.sha256).hexdigest()


class Webhook:
    def __init__(
        self, settings: WebhookSettings, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.s = settings
        self.origin = url_origin(settings.url.value)
        self._sleep = sleep
        self._opener: urllib.request.OpenerDirector | None = None

    def _open(self) -> urllib.request.OpenerDirector:
        """The opener, made on first use: a bad ca_file is this webhook's failure, never
        the job's."""
        if self._opener is None:
            ctx = ssl.create_default_context(cafile=self.s.ca_file or None)
            self._opener = urllib.request.build_opener(
                urllib.request.HTTPSHandler(context=ctx), _NoRedirect()
            )
        return self._opener

    def headers(self, body: bytes, delivery: str) -> dict[str, str]:
        h = {
            "Content-Type": "application/json",
            "User-Agent": f"vmbackup/{package_version()}",
            "X-Vmbackup-Event": EVENT,
            "X-Vmbackup-Delivery": delivery,
        }
        if self.s.token is not None:
            h[self.s.header] = self.s.token.value
            h["X-Vmbackup-Signature"] = signature(self.s.token.value, body)
        return h

    def send(self, body: bytes, delivery: str) -> Outcome:
        """POST ``body``, with its retries; the outcome of the last attempt."""
        headers = self.headers(body, delivery)
        try:
            self._open()
        except (OSError, ssl.SSLError) as exc:
            return Outcome(False, 0, f"ca_file {self.s.ca_file}: {exc}")
        delay = self.s.backoff_s
        error = ""
        for attempt in range(1, self.s.retries + 2):
            error, again, wait = self._attempt(body, headers)
            if not error:
                return Outcome(True, attempt)
            if not again or attempt > self.s.retries:
                return Outcome(False, attempt, error)
            pause = min(wait if wait is not None else delay, MAX_BACKOFF_S)
            log.warning(
                "webhook_attempt_failed",
                webhook=self.s.name,
                url=self.origin,
                attempt=attempt,
                error=error,
                retry_in_s=round(pause, 3),
            )
            self._sleep(pause)
            delay *= 2
        return Outcome(False, self.s.retries + 1, error)

    def _attempt(self, body: bytes, headers: dict[str, str]) -> tuple[str, bool, float | None]:
        """("" when accepted, else why; whether to try again; the receiver's Retry-After)."""
        req = urllib.request.Request(self.s.url.value, data=body, headers=headers, method="POST")
        try:
            with self._open().open(req, timeout=self.s.timeout_s) as resp:
                resp.read(64 * 1024)  # let the receiver finish; what it says is not used
                return "", False, None
        except urllib.error.HTTPError as exc:
            code = exc.code
            text = _shown(exc)
            what = f"HTTP {code}{f': {text}' if text else ''}"
            if 300 <= code < 400:
                return f"{what} (redirects are not followed: set the final URL)", False, None
            again = code == 429 or code >= 500
            return what, again, _retry_after(exc.headers.get("Retry-After")) if again else None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, ssl.SSLCertVerificationError):
                return f"TLS: {reason.verify_message or reason}", False, None
            return f"{type(reason).__name__}: {reason}", True, None
        except (OSError, http.client.HTTPException) as exc:  # a timeout, a dropped connection
            if isinstance(exc, ssl.SSLCertVerificationError):
                return f"TLS: {exc.verify_message or exc}", False, None
            return f"{type(exc).__name__}: {exc}", True, None


def _shown(exc: urllib.error.HTTPError) -> str:
    try:
        text = exc.read(SHOWN_BODY * 4).decode("utf-8", "replace")
    except OSError:
        return ""
    text = " ".join(text.split())
    return text[:SHOWN_BODY] + ("..." if len(text) > SHOWN_BODY else "")


def _retry_after(value: str | None) -> float | None:
    """Seconds of a ``Retry-After: <seconds>`` (an HTTP date: None, our own backoff)."""
    try:
        return min(max(0.0, float(value)), MAX_RETRY_AFTER_S) if value else None
    except ValueError:
        return None
