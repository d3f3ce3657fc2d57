"""One disk from the repository into its flat file on the datastore, with one streamed
HTTP PUT on /folder."""

from __future__ import annotations

import http.client
import ssl
import time
from collections.abc import Callable
from urllib.parse import quote

from coordinator.restore.errors import RestoreVmError
from coordinator.restore.target import Target
from coordinator.vcenter import Connection, VCenterError
from repository.errors import RepositoryError
from repository.interfaces import PointSource
from repository.points import Point
from repository.restore import restore_disk


def flat_file(ds_path: str) -> str:
    """ "[ds] dir/name.vmdk" -> "dir/name-flat.vmdk" (the data file of a flat disk)."""
    if not ds_path.startswith("[") or "]" not in ds_path or not ds_path.endswith(".vmdk"):
        raise RestoreVmError(f"unexpected disk file name {ds_path!r}")
    rel = ds_path.split("]", 1)[1].strip()
    return rel if rel.endswith("-flat.vmdk") else rel[: -len(".vmdk")] + "-flat.vmdk"


class _PutBody:
    """File-like sink that sends what restore_disk writes as the PUT request body."""

    def __init__(
        self, conn: http.client.HTTPConnection, total: int, progress: Callable[[int], None]
    ) -> None:
        self._conn = conn
        self.total = total
        self.sent = 0
        self._progress = progress

    def write(self, data: bytes | memoryview) -> int:
        n = len(data)
        if self.sent + n > self.total:
            raise RestoreVmError(f"disk data longer than its capacity {self.total}")
        self._conn.send(data)
        self.sent += n
        self._progress(self.sent)
        return n

    def flush(self) -> None:
        return None


class _TransientUploadError(Exception):
    """The connection or the server failed mid-upload: the whole PUT can be sent again."""


def upload_disk(
    conn: Connection,
    repo: PointSource,
    point: Point,
    disk_key: int,
    target: Target,
    ds_path: str,
    progress: Callable[[int], None] = lambda _n: None,
    *,
    attempts: int = 3,
    backoff_s: float = 2.0,
    on_retry: Callable[[int, str], None] = lambda _attempt, _why: None,
) -> tuple[float, int]:
    """Stream one disk of the point into its flat file; returns (seconds, attempts used).

    /folder takes no ranges, so an upload that loses its connection or gets a 5xx
    starts again from byte 0 (the flat file is written whole each time), up to
    ``attempts`` times with a doubling pause; a refusal (4xx) or a damaged chunk in the
    repository fails at once: sending again would not change the answer.
    """
    if attempts < 1:
        raise ValueError("attempts must be >= 1")
    t0 = time.monotonic()
    attempt = 1
    while True:
        try:
            _put_disk(conn, repo, point, disk_key, target, ds_path, progress)
            return time.monotonic() - t0, attempt
        except _TransientUploadError as exc:
            if attempt >= attempts:
                raise RestoreVmError(f"{exc} (after {attempts} attempts)") from exc.__cause__
            on_retry(attempt, str(exc))
            time.sleep(backoff_s * 2 ** (attempt - 1))
            attempt += 1


def _put_disk(
    conn: Connection,
    repo: PointSource,
    point: Point,
    disk_key: int,
    target: Target,
    ds_path: str,
    progress: Callable[[int], None],
) -> None:
    capacity = point.disk(disk_key).capacity
    path = flat_file(ds_path)
    where = f"[{target.datastore_name}] {path}"
    query = (
        f"dcPath={quote(target.dc_path, safe='')}&dsName={quote(target.datastore_name, safe='')}"
    )
    url = f"/folder/{quote(path)}?{query}"
    try:
        cookie = conn.cookie()
    except VCenterError as exc:
        raise RestoreVmError(f"{exc}: no session cookie for the upload") from exc
    http_conn = conn.http_connection()  # verified as the session's own connections are
    try:
        # vcsim writes the whole body and takes no ranges: one PUT of the whole disk,
        # streamed chunk by chunk (never the whole disk in memory)
        http_conn.putrequest("PUT", url, skip_accept_encoding=True)
        http_conn.putheader("Cookie", cookie)
        http_conn.putheader("Content-Type", "application/octet-stream")
        http_conn.putheader("Content-Length", str(capacity))
        http_conn.endheaders()
        progress(0)
        body = _PutBody(http_conn, capacity, progress)
        restore_disk(repo, point.id, disk_key, body)
        if body.sent != capacity:
            raise RestoreVmError(f"disk {disk_key}: sent {body.sent} of {capacity} bytes")
        resp = http_conn.getresponse()
        detail = resp.read(2000).decode(errors="replace").strip()
        if resp.status not in (200, 201, 204):
            refusal = (
                f"upload of disk {disk_key} to {where} refused: "
                f"HTTP {resp.status} {resp.reason} {detail[:200]}"
            )
            if resp.status >= 500:
                raise _TransientUploadError(refusal)
            raise RestoreVmError(refusal)
    except RepositoryError as exc:  # a chunk missing or damaged: stop before the end
        raise RestoreVmError(f"disk {disk_key}: {exc}") from exc
    except ssl.SSLCertVerificationError as exc:  # another certificate: sending again won't help
        raise RestoreVmError(
            f"upload of disk {disk_key} to {where}: TLS check failed: {exc}"
        ) from exc
    except (OSError, http.client.HTTPException) as exc:
        raise _TransientUploadError(
            f"upload of disk {disk_key} to {where} failed: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        http_conn.close()
