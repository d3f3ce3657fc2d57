"""One vCenter (or ESXi) session: verified TLS, login, keep-alive, re-login, retries, logout,
and the session cookie and connections for /folder requests.

Used by every role that talks to vCenter (the coordinator, restore-vm and the proxy's http
transport), so that each checks the server the same way. The TLS context is the whole
check: a CA bundle (or the system store) verifies chain and name in the handshake, and a
pin is checked inside the handshake too (common/tls_pin.py); no byte of a request, let
alone the login's password, leaves before the server has been verified. ``insecure``
turns checks off only when set, and says so in the log.

Every SOAP call goes through :meth:`Session._invoke` (a subclass of pyVmomi's stub): that
is where round trips are counted, expired sessions are renewed and transient faults are
retried. pyVim.connect is not used on purpose: it silently turns TLS verification off for
localhost and has no hook for any of this.
"""

from __future__ import annotations

import collections
import http.client
import random
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlparse

from pyVmomi import SoapStubAdapter, vim, vmodl

from common import tls_pin
from common.logging import get_logger
from common.redact import redact_url

log = get_logger(__name__)

COOKIE_NAME = "vmware_soap_session"
# Calls that must never trigger a re-login (they are the login).
_SESSION_METHODS = {"Login", "Logout", "LoginByToken", "LoginExtensionByCertificate"}
# A transport error leaves unknown whether vCenter ran the call; retrying these could
# create a second snapshot, so they are not retried on transport errors.
_NOT_RETRIED_ON_TRANSPORT = {"CreateSnapshot_Task", "CreateSnapshotEx_Task"}
# Faults vCenter raises when it could not do the work right now.
_TRANSIENT_FAULTS: tuple[type[BaseException], ...] = (
    vmodl.fault.HostCommunication,
    vim.fault.TaskInProgress,
)


class VCenterError(Exception):
    """A vCenter problem that is not a vSphere fault (TLS, login, settings...)."""


class VCenterTlsError(VCenterError):
    """The server's certificate failed verification or the pinned thumbprint."""


class VCenterLoginError(VCenterError):
    """vCenter refused the user name and password."""


@dataclass(frozen=True)
class Endpoint:
    """What a session needs of one vCenter, whichever role's settings it comes from."""

    name: str
    url: str
    user: str
    password: str = field(repr=False)
    user_source: str = ""  # where the secrets came from, for a refused login's message
    password_source: str = ""
    ca_bundle: str = ""
    thumbprint: str = ""  # SHA-256 pin of the certificate
    insecure: bool = False
    timeout_s: float = 120.0
    keepalive_s: float = 600.0  # 0: no keep-alive thread (sessions renewed when refused)
    retries: int = 4
    backoff_s: float = 0.5
    pool_size: int = 8


def tls_context(ep: Endpoint) -> ssl.SSLContext:
    """The context that verifies this vCenter: pinned, CA-verified, or (``insecure``) not."""
    if ep.thumbprint:
        try:
            return tls_pin.pinned_context(ep.thumbprint)
        except ValueError as exc:
            raise VCenterError(f"vcenter {ep.name}: thumbprint: {exc}") from None
    if ep.insecure:
        log.warning("tls_verification_disabled", vcenter=ep.name, url=ep.url)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    try:
        return ssl.create_default_context(cafile=ep.ca_bundle or None)
    except (OSError, ssl.SSLError) as exc:
        raise VCenterError(
            f"vcenter {ep.name}: cannot load ca_bundle {ep.ca_bundle!r}: {exc}"
        ) from exc


def _use_server_api_version(stub: SoapStubAdapter, api_version: str) -> None:
    """Talk the server's API version instead of pyVmomi's default (5.5).

    With the default, types newer than 5.5 come back as their base type: an NVMe
    controller reads as a plain VirtualController, and a saved VM config loses it.
    """
    from pyVmomi import VmomiSupport

    version = VmomiSupport.versionMap.get(f"vim25/{api_version}")
    if version is None:  # a server newer than this pyVmomi: its newest is the closest
        version = VmomiSupport.newestVersions.GetName("vim")
    stub.ComputeVersionInfo(version)  # never downgrades


def _is_transport_error(exc: BaseException) -> bool:
    if isinstance(exc, ssl.SSLCertVerificationError):  # a pin mismatch is one too
        return False
    return isinstance(exc, OSError | http.client.HTTPException)


class _Stub(SoapStubAdapter):
    """pyVmomi's stub with every call routed through the owning Session."""

    def __init__(self, owner: Session, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._owner = owner

    def InvokeMethod(self, mo: Any, info: Any, args: Any, outerStub: Any = None) -> Any:
        return self._owner._invoke(super().InvokeMethod, mo, info, args, outerStub)


class Session:
    """One logged-in vCenter session, safe to share between threads.

    Built from an :class:`Endpoint` (the url and TLS settings are checked here, before
    anything is sent); :meth:`connect` logs in.
    """

    def __init__(self, endpoint: Endpoint, sleep: Callable[[float], None] = time.sleep) -> None:
        self.endpoint = ep = endpoint
        self.name = ep.name
        u = urlparse(ep.url)
        if not u.hostname:
            raise VCenterError(f"vcenter {ep.name}: no host in url {redact_url(ep.url)!r}")
        self.https = u.scheme == "https"
        if not self.https and not ep.insecure:
            raise VCenterError(
                f"vcenter {ep.name}: plain http needs insecure = true (url {redact_url(ep.url)}):"
                " the password would cross the network in clear"
            )
        self.host = u.hostname
        self.port = u.port or (443 if self.https else 80)
        self.path = u.path or "/sdk"
        self.ssl_context = tls_context(ep) if self.https else None
        self._sleep = sleep
        self._lock = threading.Lock()
        self._login_lock = threading.Lock()
        self.generation = 0  # +1 at every re-login
        self.round_trips = 0
        self.calls: collections.Counter[str] = collections.Counter()
        self.relogins = 0
        self.retries = 0
        self._stub: _Stub | None = None
        self._content: Any = None
        self._stop = threading.Event()
        self._keepalive: threading.Thread | None = None

    # --- set-up -------------------------------------------------------------------

    def connect(self) -> Session:
        ep = self.endpoint
        stub = _Stub(
            self,
            host=self.host,
            port=self.port if self.https else -self.port,  # pyVmomi: < 0 means http
            path=self.path,
            sslContext=self.ssl_context,
            httpConnectionTimeout=ep.timeout_s,
            connectionPoolTimeout=int(max(ep.keepalive_s, ep.timeout_s) * 2),
            poolSize=ep.pool_size,
        )
        self._stub = stub
        try:
            content = vim.ServiceInstance("ServiceInstance", stub).RetrieveContent()
            _use_server_api_version(stub, content.about.apiVersion)
            self._content = content
            self._login()
        except ssl.SSLError as exc:
            self._content = None
            raise VCenterTlsError(f"vcenter {ep.name}: TLS check failed: {exc}") from exc
        except OSError as exc:
            self._content = None
            where = redact_url(ep.url)
            raise VCenterError(f"vcenter {ep.name}: cannot connect to {where}: {exc}") from exc
        except BaseException:
            self._content = None  # not connected: close() must not log out
            raise
        if ep.keepalive_s > 0:
            self._start_keepalive()
        log.info(
            "vcenter_connected", vcenter=ep.name, url=ep.url, api=self._content.about.apiVersion
        )
        return self

    def _login(self) -> None:
        ep = self.endpoint
        try:
            self._content.sessionManager.Login(ep.user, ep.password)
        except vim.fault.InvalidLogin as exc:
            raise VCenterLoginError(
                f"vcenter {ep.name}: login refused (user from {ep.user_source or 'config'},"
                f" password from {ep.password_source or 'config'}):"
                f" {getattr(exc, 'msg', '') or exc}"
            ) from exc

    def renew(self, seen_generation: int) -> None:
        """Log in again, unless another thread did since ``seen_generation``."""
        with self._login_lock:
            if self.generation != seen_generation:
                return  # another thread renewed the session already
            log.warning("vcenter_relogin", vcenter=self.name)
            for attempt in range(self.endpoint.retries + 1):
                try:
                    self._login()
                    break
                except VCenterError:
                    raise  # credentials refused: retrying cannot help
                except Exception as exc:
                    if attempt >= self.endpoint.retries:
                        raise
                    log.warning("vcenter_relogin_retry", vcenter=self.name, error=repr(exc))
                    if self._stub is not None:
                        self._stub.DropConnections()
                    self._sleep(self.endpoint.backoff_s * 2**attempt)
            self.generation += 1
            self.relogins += 1
            self._relogged()

    def _start_keepalive(self) -> None:
        self._stop.clear()
        t = threading.Thread(
            target=self._keepalive_loop, name=f"keepalive-{self.name}", daemon=True
        )
        t.start()
        self._keepalive = t

    def _keepalive_loop(self) -> None:
        while not self._stop.wait(self.endpoint.keepalive_s):
            try:
                self.keepalive()
            except Exception as exc:  # keep the thread alive; the next call will retry
                log.warning("vcenter_keepalive_failed", vcenter=self.name, error=str(exc))

    def keepalive(self) -> None:
        """Touch the session; log in again when vCenter has forgotten it."""
        gen = self.generation
        if self._content.sessionManager.currentSession is None:
            self.renew(gen)

    def close(self) -> None:
        self._stop.set()
        if self._content is not None:
            try:
                self._content.sessionManager.Logout()
            except Exception as exc:  # closing must not raise; the session expires anyway
                log.debug("vcenter_logout_failed", vcenter=self.name, error=str(exc))
            self._content = None
        if self._stub is not None:
            self._stub.DropConnections()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- what callers use ---------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._content is not None

    @property
    def content(self) -> Any:
        if self._content is None:
            raise VCenterError(f"vcenter {self.name}: not connected")
        return self._content

    @property
    def stub(self) -> Any:
        return self._stub

    def cookie(self) -> str:
        """``vmware_soap_session="..."``: the Cookie header of /folder requests."""
        raw = getattr(self._stub, "cookie", "") or ""
        morsel = SimpleCookie(raw).get(COOKIE_NAME)
        if morsel is None:
            raise VCenterLoginError(f"vcenter {self.name}: the login gave no {COOKIE_NAME} cookie")
        return f'{COOKIE_NAME}="{morsel.value}"'

    def http_connection(self, timeout_s: float | None = None) -> http.client.HTTPConnection:
        """A new connection to the server for /folder requests, verified as the session's
        own are (the pin or the CA in the handshake), not yet connected."""
        timeout = self.endpoint.timeout_s if timeout_s is None else timeout_s
        if self.ssl_context is None:
            return http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        return http.client.HTTPSConnection(
            self.host, self.port, context=self.ssl_context, timeout=timeout
        )

    # --- calls --------------------------------------------------------------------

    def _counted(self, method: str) -> None:
        """Called for every round trip (subclasses count them in metrics)."""

    def _relogged(self) -> None:
        """Called after every re-login (subclasses count them in metrics)."""

    def _invoke(self, call: Callable[..., Any], mo: Any, info: Any, args: Any, outer: Any) -> Any:
        name = info.wsdlName
        attempt = 0
        relogged = False
        while True:
            gen = self.generation
            with self._lock:
                self.round_trips += 1
                self.calls[name] += 1
            self._counted(name)
            try:
                return call(mo, info, args, outer)
            except vim.fault.NotAuthenticated:
                if name in _SESSION_METHODS or relogged:
                    raise
                self.renew(gen)
                relogged = True
            except Exception as exc:
                transient = isinstance(exc, _TRANSIENT_FAULTS) or (
                    _is_transport_error(exc) and name not in _NOT_RETRIED_ON_TRANSPORT
                )
                if not transient or attempt >= self.endpoint.retries:
                    raise
                delay = self.endpoint.backoff_s * (2**attempt) * random.uniform(0.8, 1.2)
                log.warning(
                    "vcenter_retry", vcenter=self.name, method=name, error=repr(exc), delay=delay
                )
                with self._lock:
                    self.retries += 1
                attempt += 1
                self._sleep(delay)
