"""vCenter connections: verified TLS, sessions kept alive, re-login, retries, counted calls.

Every SOAP call goes through :meth:`Connection._invoke` (a subclass of pyVmomi's stub):
that is where round trips are counted, expired sessions are renewed and transient
faults are retried. pyVim.connect is not used on purpose: it silently turns TLS
verification off for localhost and has no hook for any of this.
"""

from __future__ import annotations

import collections
import hashlib
import http.client
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlparse

from pyVmomi import SoapStubAdapter, vim, vmodl

from common import metrics
from common.logging import get_logger
from coordinator.settings import VCenterSettings

log = get_logger(__name__)

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
    """A vCenter problem that is not a vSphere fault (TLS, login, task timeout...)."""


class PinMismatchError(ssl.SSLError):
    """The server's certificate does not match the configured SHA-256 thumbprint."""


class TaskFailed(VCenterError):
    """A vSphere task ended in error; ``fault`` is the fault vCenter reported."""

    def __init__(self, what: str, fault: Any) -> None:
        msg = getattr(fault, "msg", None) or type(fault).__name__
        super().__init__(f"{what}: {type(fault).__name__}: {msg}")
        self.fault = fault


def normalize_thumbprint(text: str) -> str:
    return text.replace(":", "").strip().lower()


def pinned_connection_class(pin_hex: str) -> type[http.client.HTTPSConnection]:
    """An HTTPSConnection that accepts exactly the certificate with this SHA-256."""

    class PinnedHTTPSConnection(http.client.HTTPSConnection):
        def connect(self) -> None:
            super().connect()
            der = self.sock.getpeercert(binary_form=True) or b""
            got = hashlib.sha256(der).hexdigest()
            if got != pin_hex:
                self.close()
                raise PinMismatchError(
                    f"certificate SHA-256 {got} does not match the pinned thumbprint {pin_hex}"
                )

    return PinnedHTTPSConnection


def build_ssl_context(s: VCenterSettings) -> ssl.SSLContext:
    """Verified by default; a pin or ``insecure`` switch off CA checks (pin checked later)."""
    if s.insecure:
        log.warning("tls_verification_disabled", vcenter=s.name, url=s.url)
        return ssl._create_unverified_context()
    if s.thumbprint:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the pin is checked on every connect instead
        return ctx
    return ssl.create_default_context(cafile=s.ca_bundle or None)


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
    if isinstance(exc, ssl.SSLCertVerificationError | PinMismatchError):
        return False
    return isinstance(exc, OSError | http.client.HTTPException)


class _Stub(SoapStubAdapter):
    """pyVmomi's stub with every call routed through the owning Connection."""

    def __init__(self, owner: Connection, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._owner = owner

    def InvokeMethod(self, mo: Any, info: Any, args: Any, outerStub: Any = None) -> Any:
        return self._owner._invoke(super().InvokeMethod, mo, info, args, outerStub)


class Connection:
    """One logged-in vCenter session, safe to share between threads."""

    def __init__(
        self,
        settings: VCenterSettings,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.name = settings.name
        self._sleep = sleep
        self._lock = threading.Lock()
        self._login_lock = threading.Lock()
        self._generation = 0
        self.round_trips = 0
        self.calls: collections.Counter[str] = collections.Counter()
        self.relogins = 0
        self.retries = 0
        self._stub: _Stub | None = None
        self._si: Any = None
        self._content: Any = None
        self._stop = threading.Event()
        self._keepalive: threading.Thread | None = None

    # --- set-up -------------------------------------------------------------------

    def connect(self) -> Connection:
        s = self.settings
        u = urlparse(s.url)
        if not u.hostname:
            raise VCenterError(f"vcenter {s.name}: no host in url {s.url!r}")
        https = u.scheme == "https"
        if not https and not s.insecure:
            raise VCenterError(f"vcenter {s.name}: plain http needs insecure = true")
        port = u.port or (443 if https else 80)
        stub = _Stub(
            self,
            host=u.hostname,
            port=port if https else -port,
            path=u.path or "/sdk",
            sslContext=build_ssl_context(s) if https else None,
            httpConnectionTimeout=s.timeout_s,
            connectionPoolTimeout=int(s.keepalive_s * 2),
            poolSize=8,
        )
        if https and s.thumbprint:
            # every new pooled connection checks the pin (pyVmomi's own check is skipped
            # when a CA happens to vouch for the certificate)
            # pyVmomi's stubs type `scheme` as str; its connection pool takes a class too.
            pinned: Any = pinned_connection_class(normalize_thumbprint(s.thumbprint))
            stub.scheme = pinned
        self._stub = stub
        self._si = vim.ServiceInstance("ServiceInstance", stub)
        try:
            self._content = self._si.RetrieveContent()
        except ssl.SSLError as exc:
            raise VCenterError(f"vcenter {s.name}: TLS check failed: {exc}") from exc
        except OSError as exc:
            raise VCenterError(f"vcenter {s.name}: cannot connect to {s.url}: {exc}") from exc
        _use_server_api_version(stub, self._content.about.apiVersion)
        self._login()
        self._start_keepalive()
        log.info("vcenter_connected", vcenter=s.name, url=s.url, api=self._content.about.apiVersion)
        return self

    def _login(self) -> None:
        s = self.settings
        try:
            self._content.sessionManager.Login(s.user.value, s.password.value)
        except vim.fault.InvalidLogin as exc:
            raise VCenterError(
                f"vcenter {s.name}: login refused (user from {s.user.source},"
                f" password from {s.password.source}): {getattr(exc, 'msg', '') or exc}"
            ) from exc

    def _relogin(self, seen_generation: int) -> None:
        with self._login_lock:
            if self._generation != seen_generation:
                return  # another thread renewed the session already
            log.warning("vcenter_relogin", vcenter=self.name)
            for attempt in range(self.settings.retries + 1):
                try:
                    self._login()
                    break
                except VCenterError:
                    raise  # credentials refused: retrying cannot help
                except Exception as exc:
                    if attempt >= self.settings.retries:
                        raise
                    log.warning("vcenter_relogin_retry", vcenter=self.name, error=repr(exc))
                    if self._stub is not None:
                        self._stub.DropConnections()
                    self._sleep(self.settings.backoff_s * 2**attempt)
            self._generation += 1
            self.relogins += 1
            metrics.COORD_VCENTER_RELOGINS.labels(self.name).inc()

    def _start_keepalive(self) -> None:
        self._stop.clear()
        t = threading.Thread(
            target=self._keepalive_loop, name=f"keepalive-{self.name}", daemon=True
        )
        t.start()
        self._keepalive = t

    def _keepalive_loop(self) -> None:
        while not self._stop.wait(self.settings.keepalive_s):
            try:
                self.keepalive()
            except Exception as exc:  # keep the thread alive; the next call will retry
                log.warning("vcenter_keepalive_failed", vcenter=self.name, error=str(exc))

    def keepalive(self) -> None:
        """Touch the session; log in again when vCenter has forgotten it."""
        gen = self._generation
        if self._content.sessionManager.currentSession is None:
            self._relogin(gen)

    def close(self) -> None:
        self._stop.set()
        if self._content is not None:
            try:
                self._content.sessionManager.Logout()
            except Exception as exc:  # closing must not raise
                log.debug("vcenter_logout_failed", vcenter=self.name, error=str(exc))
        if self._stub is not None:
            self._stub.DropConnections()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- calls --------------------------------------------------------------------

    @property
    def content(self) -> Any:
        if self._content is None:
            raise VCenterError(f"vcenter {self.name}: not connected")
        return self._content

    @property
    def stub(self) -> Any:
        return self._stub

    def _invoke(self, call: Callable[..., Any], mo: Any, info: Any, args: Any, outer: Any) -> Any:
        name = info.wsdlName
        attempt = 0
        relogged = False
        while True:
            gen = self._generation
            with self._lock:
                self.round_trips += 1
                self.calls[name] += 1
            metrics.COORD_VCENTER_CALLS.labels(self.name).inc()
            try:
                return call(mo, info, args, outer)
            except vim.fault.NotAuthenticated:
                if name in _SESSION_METHODS or relogged:
                    raise
                self._relogin(gen)
                relogged = True
            except Exception as exc:
                transient = isinstance(exc, _TRANSIENT_FAULTS) or (
                    _is_transport_error(exc) and name not in _NOT_RETRIED_ON_TRANSPORT
                )
                if not transient or attempt >= self.settings.retries:
                    raise
                delay = self.settings.backoff_s * (2**attempt) * random.uniform(0.8, 1.2)
                log.warning(
                    "vcenter_retry", vcenter=self.name, method=name, error=repr(exc), delay=delay
                )
                with self._lock:
                    self.retries += 1
                attempt += 1
                self._sleep(delay)

    def moref(self, type_name: str, value: str) -> Any:
        """A managed object of this connection from its type and moref value."""
        return getattr(vim, type_name)(value, self._stub)

    def get_properties(self, obj: Any, paths: Iterable[str]) -> dict[str, Any]:
        """Selected properties of one object in one round trip (missing ones absent)."""
        pc = self.content.propertyCollector
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=obj, skip=False)],
            propSet=[
                vmodl.query.PropertyCollector.PropertySpec(
                    type=type(obj), pathSet=list(paths), all=False
                )
            ],
        )
        res = pc.RetrievePropertiesEx([spec], vmodl.query.PropertyCollector.RetrieveOptions())
        out: dict[str, Any] = {}
        if res is not None:
            for oc in res.objects:
                for p in oc.propSet or []:
                    out[p.name] = p.val
        return out

    def wait_task(self, task: Any, what: str, timeout_s: float) -> Any:
        """Wait for a task by polling only state, error and result; return the result.

        Reading the whole TaskInfo is avoided: its entity can be of a type pyVmomi's
        checks reject (a removed snapshot), and it is larger than needed.
        """
        deadline = time.monotonic() + timeout_s
        delay = 0.05
        while True:
            props = self.get_properties(task, ["info.state", "info.error", "info.result"])
            state = props.get("info.state")
            if state == vim.TaskInfo.State.success:
                return props.get("info.result")
            if state == vim.TaskInfo.State.error:
                raise TaskFailed(what, props.get("info.error"))
            left = deadline - time.monotonic()
            if left <= 0:
                raise VCenterError(f"{what}: task {task._moId} not done after {timeout_s:.0f}s")
            time.sleep(min(delay, left))
            delay = min(delay * 1.6, 2.0)
