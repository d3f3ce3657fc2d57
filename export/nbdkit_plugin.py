"""Our plugin for nbdkit's Python plugin: one disk of a restore point, read-only.

nbdkit runs this file (``nbdkit python export/nbdkit_plugin.py repo=... point=...
disk=...``; `vmbackup export` builds that command line, export/nbdkit_server.py) and
calls the functions below by name. Reads go to repository.disk_reader: zero chunks as
zeros, other chunks read on demand, checked, kept decoded in a bounded cache. A chunk
that cannot be read or fails its check answers EIO to the client (logged), never wrong
bytes. Writes never reach this plugin: ``--writable`` puts nbdkit's cow filter in
front, which keeps them in a temporary overlay.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from typing import Any

import nbdkit  # exists only inside nbdkit (mypy: ignore_missing_imports)

from common.logging import get_logger, setup_logging
from export import metrics
from export.plugin_config import PluginParams, open_reader
from export.plugin_control import stop_on_eof
from repository.disk_reader import ChunkReadError, DiskReader
from repository.errors import RepositoryError
from repository.holds import Hold

API_VERSION = 2

_params = PluginParams()
_reader: DiskReader | None = None
_hold: Hold | None = None
_log: Any = None


def config(key: str, value: str) -> None:
    _params.set(key, value)


def config_complete() -> None:
    global _reader, _hold, _log
    _params.check()
    setup_logging(stream=sys.stderr, role="export")  # stdout is vmbackup's (--json)
    _log = get_logger("export", point=_params.point, disk=_params.disk)
    _reader, _hold = open_reader(_params)


def thread_model() -> int:
    # Connections in parallel (decoding releases the GIL; nbdcopy opens four, as
    # can_multi_conn allows), one request at a time within each: with requests in
    # parallel on a connection, nbdkit 1.32 aborts (connections.c raw_send_socket:
    # assertion `sock >= 0`) when a client drops it with replies outstanding, as
    # nbdcopy does on a read error. tests/export/test_export_nbd.py meets that case.
    return int(nbdkit.THREAD_MODEL_SERIALIZE_REQUESTS)


def after_fork() -> None:
    # after any fork of nbdkit's: the metrics server's thread must live in the server
    if _params.metrics_port:
        from common.metrics import serve_metrics

        serve_metrics(
            _params.metrics_port, _params.metrics_address, role_families=[metrics.REGISTRY]
        )
    if _params.control_fd >= 0:
        stop_on_eof(_params.control_fd, nbdkit.shutdown)
    if _hold is not None:
        _hold.start_refresh()  # a thread: it must live in the serving process
    metrics.EXPORT_OPEN.set(1)


def cleanup() -> None:
    """At exit: one JSON line of what was served, for `vmbackup export` to report."""
    metrics.EXPORT_OPEN.set(0)
    if _hold is not None:
        try:
            _hold.release()
        except RepositoryError as exc:  # it goes stale: prune ignores it after holds.STALE
            _log.warning("point_hold_not_released", error=str(exc))
    if _reader is None or _params.status_fd < 0:
        return
    s = _reader.stats
    line = json.dumps(
        {
            "reads": s.reads,
            "bytes_read": s.bytes_read,
            "cache_hits": s.cache_hits,
            "cache_misses": s.cache_misses,
            "read_errors": s.read_errors,
        }
    )
    try:
        os.write(_params.status_fd, line.encode() + b"\n")
        os.close(_params.status_fd)
    except OSError:
        pass  # the parent is gone: nobody to tell


def open(readonly: bool) -> DiskReader:  # nbdkit calls it by this name
    assert _reader is not None
    metrics.EXPORT_CONNECTIONS.inc()
    return _reader


def close(h: DiskReader) -> None:
    metrics.EXPORT_CONNECTIONS.dec()


def get_size(h: DiskReader) -> int:
    return h.size


def block_size(h: DiskReader) -> tuple[int, int, int]:
    # any read is fine; a chunk at a time is cheapest (nbdkit caps preferred at 32 MiB)
    return 1, min(h.chunk_size, 32 << 20), 0xFFFFFFFF


def can_write(h: DiskReader) -> bool:
    return False


def can_multi_conn(h: DiskReader) -> bool:
    return True  # read-only: every connection sees the same bytes


def can_cache(h: DiskReader) -> int:
    return int(nbdkit.CACHE_NONE)


def is_rotational(h: DiskReader) -> bool:
    return False


def can_extents(h: DiskReader) -> bool:
    return True


def extents(h: DiskReader, count: int, offset: int, flags: int) -> list[tuple[int, int, int]]:
    zero = int(nbdkit.EXTENT_HOLE | nbdkit.EXTENT_ZERO)
    return [(e.offset, e.length, zero if e.zero else 0) for e in h.extents(offset, count)]


def pread(h: DiskReader, buf: Any, offset: int, flags: int) -> None:
    try:
        h.pread(buf, offset)
    except ChunkReadError as exc:
        metrics.EXPORT_READ_ERRORS.inc()
        _log.error("read failed: EIO to the client", offset=offset, length=len(buf), error=str(exc))
        nbdkit.set_error(errno.EIO)
        raise RuntimeError(str(exc)) from None
    except RepositoryError as exc:
        nbdkit.set_error(errno.EINVAL)
        raise RuntimeError(str(exc)) from None
    metrics.EXPORT_READS.inc()
    metrics.EXPORT_READ_BYTES.inc(len(buf))
