"""NBD transport against real nbdkit (file plugin) serving sparse files."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from proxy_worker.errors import DiskNotFoundError, OutOfRangeError, ShortReadError, TransportError
from proxy_worker.settings import NbdSettings, ProxySettings
from proxy_worker.transports.nbd import NbdReader, NbdTransport, file_command
from tests.proxy.proxy_helpers import MiB, SparseDisk, fs_supports_holes

pytestmark = pytest.mark.integration


def _nbd_settings(d: SparseDisk, **kw: object) -> ProxySettings:
    return ProxySettings(
        datastore_mounts=d.settings.datastore_mounts, nbd=NbdSettings(server="file", **kw)
    )


def test_command_for_mounted_datastore(sparse_disk: SparseDisk) -> None:
    argv = NbdTransport(_nbd_settings(sparse_disk)).command(sparse_disk.source)
    path = str(sparse_disk.path)
    assert argv == ["nbdkit", "-s", "--exit-with-parent", "--threads=4", "-r", "file", path]
    argv = NbdTransport(_nbd_settings(sparse_disk, in_flight=8)).command(sparse_disk.source)
    assert argv[3] == "--threads=8"  # server threads follow the requests one stream sends


@pytest.mark.parametrize("in_flight", [1, 4])
def test_read_many_matches_every_byte(sparse_disk: SparseDisk, in_flight: int) -> None:
    cap = sparse_disk.source.capacity
    ranges = [(o, min(MiB, cap - o)) for o in range(0, cap, MiB)]
    with NbdTransport(_nbd_settings(sparse_disk, in_flight=in_flight)).open(
        sparse_disk.source
    ) as r:
        out = list(r.read_many(ranges))
        single = r.read(3 * MiB, 4096 * 3)
    assert [o for o, _ in out] == [o for o, _ in ranges]
    assert b"".join(bytes(b) for _, b in out) == sparse_disk.data
    assert single == sparse_disk.data[3 * MiB : 3 * MiB + 4096 * 3]


def test_read_buffers_are_lent_and_reused_only_when_dropped(sparse_disk: SparseDisk) -> None:
    """The chunks read_many yields are the aio buffers themselves: a chunk the caller keeps
    is never overwritten by later reads (of this reader or the next), and buffers the
    caller dropped serve the next reads instead of new ones."""
    t = NbdTransport(_nbd_settings(sparse_disk, in_flight=4))
    cap = sparse_disk.source.capacity
    ranges = [(o, MiB) for o in range(0, cap - MiB, MiB)]
    with t.open(sparse_disk.source) as r:
        kept = list(r.read_many(ranges))  # the first task keeps every chunk
    kept_bytes = t.buffers.kept
    assert kept_bytes == len(ranges) * MiB
    for _ in range(2):  # two more tasks on the same transport drop each chunk once checked
        with t.open(sparse_disk.source) as r:
            for off, data in r.read_many(ranges):
                assert data == sparse_disk.data[off : off + MiB]
                assert all(data is not k for _, k in kept)
    assert t.buffers.kept <= kept_bytes + 5 * MiB  # in flight plus the one being looked at
    for off, data in kept:
        assert data == sparse_disk.data[off : off + MiB]
    grown = t.buffers.kept
    del kept, data
    with t.open(sparse_disk.source) as r:
        assert sum(len(d) for _, d in r.read_many(ranges)) == len(ranges) * MiB
    assert t.buffers.kept == grown  # the dropped buffers were enough


def test_stopping_early_leaves_no_request_behind(sparse_disk: SparseDisk) -> None:
    with NbdTransport(_nbd_settings(sparse_disk, in_flight=8)).open(sparse_disk.source) as r:
        gen = r.read_many((o, MiB) for o in range(0, 16 * MiB, MiB))
        first = next(gen)
        gen.close()
        assert bytes(first[1]) == sparse_disk.data[:MiB]
        # the handle is still usable after the abandoned requests drained
        assert r.read(10 * MiB, 100) == sparse_disk.data[10 * MiB : 10 * MiB + 100]


def test_block_status_reports_holes(sparse_disk: SparseDisk) -> None:
    if not fs_supports_holes(sparse_disk.path):
        pytest.skip("filesystem without SEEK_HOLE")
    cap = sparse_disk.source.capacity
    with NbdTransport(_nbd_settings(sparse_disk)).open(sparse_disk.source) as r:
        exts = r.extents(0, cap)
        part = r.extents(2 * MiB, 2 * MiB)
    assert exts[0].offset == 0 and exts[-1].end == cap
    assert part[0].offset == 2 * MiB and part[-1].end == 4 * MiB
    for e in exts + part:
        if not e.data:
            assert sparse_disk.data[e.offset : e.end] == bytes(e.length)
    for off, ln in sparse_disk.data_ranges:
        assert all(e.data for e in exts if e.offset < off + ln and off < e.end)
    assert sum(e.length for e in exts if not e.data) > cap // 2


def test_read_past_capacity(sparse_disk: SparseDisk) -> None:
    with NbdTransport(_nbd_settings(sparse_disk)).open(sparse_disk.source) as r:
        with pytest.raises(OutOfRangeError):
            r.read(sparse_disk.source.capacity - 1, 2)
        with pytest.raises(OutOfRangeError):
            list(r.read_many([(0, MiB), (sparse_disk.source.capacity, 1)]))


def test_export_smaller_than_capacity(sparse_disk: SparseDisk) -> None:
    src = replace(sparse_disk.source, capacity=sparse_disk.source.capacity + 512)
    with pytest.raises(ShortReadError, match="less than capacity"):
        NbdTransport(_nbd_settings(sparse_disk)).open(src)


def test_missing_file_and_failing_server(sparse_disk: SparseDisk) -> None:
    t = NbdTransport(_nbd_settings(sparse_disk))
    with pytest.raises(DiskNotFoundError):
        t.open(replace(sparse_disk.source, disk_file="[ds1] no/x.vmdk"))
    # nbdkit itself failing to serve (bad plugin argument) is a transport error
    with pytest.raises(TransportError, match="nbd connect"):
        NbdReader(
            ["nbdkit", "-s", "--exit-with-parent", "-r", "file", "/nonexistent/x"],
            10,
            NbdSettings(),
        )


def test_server_dying_mid_stream_is_a_transport_error(sparse_disk: SparseDisk) -> None:
    # Serve through a shell wrapper so the test can kill the server process.
    pidfile = sparse_disk.path.parent / "nbdkit.pid"
    argv = [*file_command(str(sparse_disk.path), NbdSettings())]
    argv[1:1] = ["-P", str(pidfile)]
    with NbdReader(argv, sparse_disk.source.capacity, NbdSettings()) as r:
        r.read(0, 4096)
        os.kill(int(pidfile.read_text()), 9)
        with pytest.raises(TransportError, match="nbd"):
            for o in range(0, sparse_disk.source.capacity - MiB, MiB):
                r.read(o, MiB)
