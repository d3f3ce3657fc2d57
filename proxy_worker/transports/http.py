"""HTTP transport: ranged GET of the flat file on /folder/PATH?dcPath=DC&dsName=DS.

Authenticated with the vCenter/ESXi session cookie (a SOAP login through pyVmomi over the
same verified TLS), a keep-alive connection pool per server, and reads that resume from the
last byte received when a connection drops mid-range.
"""

from __future__ import annotations

import http.client
import re
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar
from urllib.parse import quote, urlencode

from common.logging import get_logger, in_log_context
from common.redact import redact_url
from common.snapshot_disk import SnapshotDisk
from proxy_worker.errors import (
    AuthError,
    ConfigError,
    DiskNotFoundError,
    ShortReadError,
    TlsError,
    TransportError,
)
from proxy_worker.settings import HttpSettings, VCenterAccess, VCenterDirectory
from proxy_worker.transports.base import DiskReader, check_range, flat_file
from proxy_worker.transports.read_buffers import ReadBuffers

log = get_logger(__name__)

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_READ_PIECE = 1 << 20  # bytes per readinto: small enough to keep progress on a drop
_T = TypeVar("_T")


class Server:
    """One vCenter/ESXi: its session (common/vcenter_session.py: TLS checked in every
    handshake, login, cookie) and a keep-alive pool of /folder connections."""

    def __init__(self, vc: VCenterAccess, settings: HttpSettings) -> None:
        # heavy import (pyVmomi), only once a task reads over http
        from common.vcenter_session import Endpoint, Session, VCenterError

        self.vc = vc
        self.settings = settings
        endpoint = Endpoint(
            name=vc.name,
            url=vc.url,
            user=vc.user,
            password=vc.password,
            ca_bundle=vc.ca_bundle,
            thumbprint=vc.thumbprint,
            insecure=vc.insecure,
            timeout_s=settings.timeout,
            keepalive_s=0,  # no thread per vCenter: a refused cookie renews the session
            retries=settings.retries,
            backoff_s=settings.backoff,
            pool_size=1,  # the session's own SOAP calls: login, logout
        )
        try:
            self.session = Session(endpoint)
        except VCenterError as exc:  # plain http without insecure, a bad pin or CA bundle
            raise ConfigError(str(exc)) from exc
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._login_lock = threading.Lock()
        self.opened = 0  # connections made (tests check reuse)

    # --- connection pool -----------------------------------------------------------
    def acquire(self) -> http.client.HTTPConnection:
        with self._lock:
            if self._idle:
                return self._idle.pop()
            self.opened += 1
        return self.session.http_connection(self.settings.timeout)

    def release(self, conn: http.client.HTTPConnection, reusable: bool) -> None:
        if reusable:
            with self._lock:
                if len(self._idle) < self.settings.pool_size:
                    self._idle.append(conn)
                    return
        conn.close()

    # --- session ---------------------------------------------------------------------
    def cookie(self) -> tuple[str, int]:
        """The session cookie and its generation; logs in on first use."""
        with self._login_lock:
            if not self.session.connected:
                self._session_call(self.session.connect)
            return self._session_call(self.session.cookie), self.session.generation

    def login(self, stale_gen: int) -> tuple[str, int]:
        """Log in again unless another thread already replaced the stale cookie."""
        with self._login_lock:
            if not self.session.connected:
                self._session_call(self.session.connect)
            else:
                self._session_call(lambda: self.session.renew(stale_gen))
            return self._session_call(self.session.cookie), self.session.generation

    def _session_call(self, call: Callable[[], _T]) -> _T:
        """``call`` with the session's errors as the proxy's (a task fails cleanly)."""
        from common.vcenter_session import VCenterError, VCenterLoginError, VCenterTlsError

        try:
            return call()
        except VCenterLoginError as exc:
            raise AuthError(f"login to {self.vc.name} as {self.vc.user!r} refused: {exc}") from exc
        except VCenterTlsError as exc:
            raise TlsError(str(exc)) from exc
        except ssl.SSLError as exc:  # on a re-login
            raise TlsError(f"TLS to {redact_url(self.vc.url)}: {exc}") from exc
        except VCenterError as exc:
            raise TransportError(str(exc)) from exc
        except Exception as exc:  # pyVmomi raises many kinds; all fail the task cleanly
            raise TransportError(f"login to {redact_url(self.vc.url)}: {exc!r}") from exc

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for c in idle:
            c.close()
        self.session.close()  # logs out; best effort, the session expires anyway


def folder_url(source: SnapshotDisk) -> str:
    """The /folder URL of the disk's flat data file (path-quoted, query-encoded)."""
    ds, rel = flat_file(source.disk_file)
    query = urlencode({"dcPath": source.datacenter, "dsName": ds}, quote_via=quote)
    return f"/folder/{quote(rel)}?{query}"


class _Retry(Exception):
    """A failure worth another attempt (dropped connection, 5xx, timeout)."""


class HttpReader(DiskReader):
    transport = "http"

    def __init__(self, server: Server, source: SnapshotDisk, buffers: ReadBuffers) -> None:
        super().__init__(source.capacity)
        self.server = server
        self.url = folder_url(source)
        self._buffers = buffers
        self.resumes = 0  # requests made to continue a dropped range (tests, metrics)
        self._resumes_lock = threading.Lock()

    def read(self, offset: int, length: int) -> bytearray:
        check_range(offset, length, self.capacity)
        buf = bytearray(length)
        if length:
            self._fill([memoryview(buf)], offset, length)
        return buf

    def read_many(self, ranges: Iterable[tuple[int, int]]) -> Iterator[tuple[int, bytearray]]:
        """Adjacent ranges are read with one GET of up to ``request_bytes`` (each range into
        its own buffer): a /folder request costs the server (hostd on ESXi) far more than
        its bytes, and the client a round trip and a response to parse. Up to
        ``requests_in_flight`` GETs run at once, each on its own pooled connection and
        thread, so that decrypting one response overlaps the server sending the next;
        chunks are yielded in order. The ranges of a request are taken from ``ranges``
        before it is sent, i.e. charged to the proxy's memory budget while it is in
        flight, as the nbd transport's requests are."""
        requests = self._requests(ranges)
        in_flight = self.server.settings.requests_in_flight
        if in_flight == 1:
            for request in requests:
                self._fill_request(*request)
                yield from _chunks_of(*request)
                del request  # the buffers are the caller's now: reusable once it drops them
            return
        pending: deque[tuple[int, list[bytearray], Future[None]]] = deque()
        pool = ThreadPoolExecutor(in_flight, thread_name_prefix="http-read")
        try:
            for request in requests:
                fill = in_log_context(self._fill_request)
                pending.append((*request, pool.submit(fill, *request)))
                del request
                if len(pending) == in_flight:
                    yield from _chunks_when_read(pending.popleft())
            while pending:
                yield from _chunks_when_read(pending.popleft())
        finally:
            # on an error or an early close no request keeps writing into buffers that were
            # given back: the queued ones never start, the running ones are waited for
            pool.shutdown(wait=True, cancel_futures=True)

    def _requests(self, ranges: Iterable[tuple[int, int]]) -> Iterator[tuple[int, list[bytearray]]]:
        """(offset, a buffer per range) of each GET: adjacent ranges up to request_bytes."""
        limit = self.server.settings.request_bytes
        it = iter(ranges)
        nxt = next(it, None)
        while nxt is not None:
            run = [nxt]
            end, total = nxt[0] + nxt[1], nxt[1]
            nxt = None
            for r in it:
                if r[0] == end and total + r[1] <= limit:
                    run.append(r)
                    end, total = end + r[1], total + r[1]
                else:
                    nxt = r
                    break
            for off, ln in run:
                check_range(off, ln, self.capacity)
            yield run[0][0], [self._buffers.take(ln) for _, ln in run]

    def _fill_request(self, offset: int, bufs: list[bytearray]) -> None:
        total = sum(len(b) for b in bufs)
        if total:
            self._fill([memoryview(b) for b in bufs], offset, total)

    def _fill(self, views: list[memoryview], offset: int, length: int) -> None:
        """Read ``length`` bytes at ``offset`` into ``views`` (consecutive), resuming after
        dropped connections, logging in again once after an expired session."""
        got = 0
        failures = 0
        relogged = False
        cookie, gen = self.server.cookie()
        while got < length:
            before = got
            conn = self.server.acquire()
            reusable = False
            try:
                got, reusable = self._get(conn, cookie, views, offset, got, length)
            except AuthError:
                if relogged:
                    raise
                relogged = True  # session expired: one fresh login, then the same range
                cookie, gen = self.server.login(gen)
                continue
            except _Retry as exc:
                failures = 0 if got > before else failures + 1
                if failures > self.server.settings.retries:
                    raise TransportError(
                        f"GET {self.url} at {offset + got}: {exc} "
                        f"({failures} attempts without progress)"
                    ) from exc
                with self._resumes_lock:  # requests in flight resume on their own threads
                    self.resumes += 1
                log.info("http_resume", url=self.url, at=offset + got, error=str(exc))
                if failures:
                    time.sleep(self.server.settings.backoff * 2 ** (failures - 1))
            finally:
                self.server.release(conn, reusable)

    def _get(
        self,
        conn: http.client.HTTPConnection,
        cookie: str,
        views: list[memoryview],
        offset: int,
        got: int,
        length: int,
    ) -> tuple[int, bool]:
        """One ranged GET from offset+got; returns (bytes now held, connection reusable).
        Progress made before a drop is kept: the caller resumes from there."""
        first, last = offset + got, offset + length - 1
        try:
            conn.request(
                "GET",
                self.url,
                headers={"Range": f"bytes={first}-{last}", "Cookie": cookie},
            )
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            if isinstance(exc, ssl.SSLCertVerificationError):
                raise TlsError(f"TLS to {redact_url(self.server.vc.url)}: {exc}") from exc
            raise _Retry(f"request failed: {exc!r}") from exc
        status = resp.status
        if status != 206:
            resp.read()  # drain so the connection stays usable
            if status in (401, 403):
                raise AuthError(f"GET {self.url}: HTTP {status}")
            if status == 404:
                raise DiskNotFoundError(f"GET {self.url}: HTTP 404 (disk data not found)")
            if status == 416:
                raise ShortReadError(f"GET {self.url}: range {first}-{last} not satisfiable")
            if status >= 500 or status == 429:
                raise _Retry(f"HTTP {status}")
            # 200 would be the whole file: a server ignoring Range is not usable here.
            raise TransportError(f"GET {self.url} range {first}-{last}: HTTP {status}")
        m = _CONTENT_RANGE.match(resp.getheader("Content-Range", ""))
        if m is None or int(m.group(1)) != first:
            resp.close()
            raise TransportError(
                f"GET {self.url}: Content-Range {resp.getheader('Content-Range')!r} "
                f"does not start at {first}"
            )
        if int(m.group(2)) < last:
            resp.close()
            raise ShortReadError(
                f"GET {self.url}: server has bytes up to {m.group(2)}, asked up to {last}"
            )
        i, at = _locate(views, got)
        try:
            while got < length:
                v = views[i]
                n = resp.readinto(v[at : min(len(v), at + _READ_PIECE)])
                if not n:
                    break
                got += n
                at += n
                if at == len(v):
                    i, at = i + 1, 0
        except (OSError, http.client.HTTPException) as exc:
            resp.close()
            raise _Retry(f"connection dropped after {got} of {length} bytes: {exc!r}") from exc
        if got < length:
            resp.close()
            raise _Retry(f"connection dropped after {got} of {length} bytes")
        return got, not resp.will_close and resp.isclosed()


def _chunks_of(offset: int, bufs: list[bytearray]) -> Iterator[tuple[int, bytearray]]:
    for buf in bufs:
        yield offset, buf
        offset += len(buf)


def _chunks_when_read(
    request: tuple[int, list[bytearray], Future[None]],
) -> Iterator[tuple[int, bytearray]]:
    """The chunks of a request in flight once it is read (its error if it failed); holds
    no reference to them once they are all handed on."""
    offset, bufs, done = request
    del request
    done.result()
    yield from _chunks_of(offset, bufs)


def _locate(views: list[memoryview], pos: int) -> tuple[int, int]:
    """(index of the view holding byte ``pos`` of their concatenation, offset in it)."""
    for i, v in enumerate(views):
        if pos < len(v):
            return i, pos
        pos -= len(v)
    return len(views), 0


class HttpTransport:
    name = "http"

    def __init__(
        self,
        settings: HttpSettings,
        vcenters: VCenterDirectory,
        buffers: ReadBuffers | None = None,
    ) -> None:
        self.settings = settings
        self.vcenters = vcenters
        # without the proxy's pool: enough for one request and the chunks being looked at
        self.buffers = buffers or ReadBuffers(2 * settings.request_bytes)
        self._servers: dict[str, Server] = {}
        self._lock = threading.Lock()

    def server(self, vcenter: str) -> Server:
        with self._lock:
            s = self._servers.get(vcenter)
            if s is None:
                s = self._servers[vcenter] = Server(self.vcenters.get(vcenter), self.settings)
            return s

    def open(self, source: SnapshotDisk) -> HttpReader:
        return HttpReader(self.server(source.vcenter), source, self.buffers)

    def close(self) -> None:
        with self._lock:
            servers, self._servers = list(self._servers.values()), {}
        for s in servers:
            s.close()
