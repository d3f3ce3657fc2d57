"""Every transport against the vSphere lab: a snapshot's disk is read byte for byte as frozen,
writes made after the snapshot are not seen, and a dropped HTTP connection resumes."""

from __future__ import annotations

import dataclasses
import hashlib
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pyVim.task import WaitForTask
from pyVmomi import vim

from common.snapshot_disk import SnapshotDisk
from lab import Lab, LabSpec
from proxy_worker.errors import DiskNotFoundError, OutOfRangeError, TlsError
from proxy_worker.settings import (
    HttpSettings,
    NbdSettings,
    ProxySettings,
    VCenterAccess,
    VCenterDirectory,
)
from proxy_worker.transports.base import DiskReader
from proxy_worker.transports.file import FileTransport
from proxy_worker.transports.http import HttpReader, HttpTransport
from proxy_worker.transports.nbd import NbdTransport
from proxy_worker.transports.read_buffers import ReadBuffers
from tests.proxy.relay import CuttingRelay

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MiB = 1 << 20


@pytest.fixture(scope="module")
def snap() -> Iterator[dict[str, Any]]:
    spec = LabSpec(
        clusters=1,
        hosts_per_cluster=1,
        vms_per_host=1,
        disks_per_vm=1,
        disk_sizes=[12 * MiB + 4096 * 3],
        odd_names=True,
    )
    with Lab.start(spec) as lab:
        vm = lab.vms()[0]
        disk = vm["disks"][0]
        lab.fill_disks(seed=11, block_size=MiB)
        si = lab.connect()
        vmo = vim.VirtualMachine(vm["moref"], si._stub)
        task = vmo.CreateSnapshot_Task(name="b", description="", memory=False, quiesce=False)
        WaitForTask(task)
        snapshot = task.info.result
        sdisk = next(
            d
            for d in snapshot.config.hardware.device
            if isinstance(d, vim.vm.device.VirtualDisk) and d.key == disk["key"]
        )
        frozen = lab.local_path(sdisk.backing.fileName).read_bytes()
        # the guest keeps writing after the snapshot: none of this may be read
        after = random.Random(2).randbytes(64 * 1024)
        for off in (0, 5 * MiB, disk["capacity"] - len(after)):
            lab.write_guest_data(vm["moref"], disk["key"], off, after)
        ds = sdisk.backing.fileName[1:].split("]", 1)[0]
        source = SnapshotDisk(
            vcenter="lab",
            datacenter=vm["datacenter"],
            host=vm["host"],
            datastore=ds,
            vm_moref=vm["moref"],
            snapshot_moref=snapshot._moId,
            disk_file=sdisk.backing.fileName,
            capacity=disk["capacity"],
        )
        vc = VCenterAccess(
            name="lab", url=lab.url, user=lab.user, password=lab.password, thumbprint=lab.thumbprint
        )
        yield {
            "lab": lab,
            "source": source,
            "frozen": frozen,
            "after": after,
            "vc": vc,
            "current": lab.read_guest_data(vm["moref"], disk["key"], 0, disk["capacity"]),
        }


def _read_all(r: DiskReader, step: int = 3 * MiB) -> bytes:
    cap = r.capacity
    return b"".join(
        bytes(b) for _, b in r.read_many((o, min(step, cap - o)) for o in range(0, cap, step))
    )


def _check(snap: dict[str, Any], got: bytes) -> None:
    assert len(got) == snap["source"].capacity
    assert hashlib.sha256(got).digest() == hashlib.sha256(snap["frozen"]).digest()
    assert got != snap["current"]  # the post-snapshot writes are not there
    assert snap["after"] not in got[: len(snap["after"])]


def _settings(snap: dict[str, Any], **kw: Any) -> ProxySettings:
    return ProxySettings(datastore_mounts=snap["lab"].datastores, **kw)


def test_file_transport_reads_the_frozen_snapshot(snap: dict[str, Any]) -> None:
    with FileTransport(_settings(snap)).open(snap["source"]) as r:
        _check(snap, _read_all(r))


def test_nbd_transport_reads_the_frozen_snapshot(snap: dict[str, Any]) -> None:
    t = NbdTransport(_settings(snap, nbd=NbdSettings(server="file", in_flight=4)))
    with t.open(snap["source"]) as r:
        _check(snap, _read_all(r))
        exts = r.extents(0, r.capacity)
        for e in exts:
            if not e.data:
                assert snap["frozen"][e.offset : e.end] == bytes(e.length)
        assert any(not e.data for e in exts)  # fill_disks leaves unallocated blocks


def test_http_transport_reads_the_frozen_snapshot(snap: dict[str, Any]) -> None:
    t = HttpTransport(HttpSettings(), VCenterDirectory([snap["vc"]]))
    try:
        with t.open(snap["source"]) as r:
            _check(snap, _read_all(r))
            with pytest.raises(OutOfRangeError):
                r.read(r.capacity - 1, 2)
        server = t.server("lab")
        assert server.opened <= 2  # keep-alive: a handful of connections, not one per range
        missing = dataclasses.replace(
            snap["source"], disk_file="[" + snap["source"].datastore + "] nope/x.vmdk"
        )
        with pytest.raises(DiskNotFoundError), t.open(missing) as r:
            r.read(0, 10)
    finally:
        t.close()


def test_http_chunks_are_pooled_buffers_never_overwritten_while_held(
    snap: dict[str, Any],
) -> None:
    pool = ReadBuffers(64 * MiB)  # as the proxy's service shares one with nbd
    settings = HttpSettings(request_bytes=2 * MiB, requests_in_flight=2)
    t = HttpTransport(settings, VCenterDirectory([snap["vc"]]), pool)
    cap = snap["source"].capacity
    ranges = [(o, MiB) for o in range(0, cap - MiB, MiB)]
    try:
        with t.open(snap["source"]) as r:
            kept = list(r.read_many(ranges))
            pooled = t.buffers.kept
            for _ in range(2):  # later reads take only buffers nobody holds
                for off, data in r.read_many(ranges):
                    assert data == snap["frozen"][off : off + MiB]
                    assert all(data is not k for _, k in kept)
        for off, data in kept:
            assert data == snap["frozen"][off : off + MiB]
        assert pooled == len(ranges) * MiB
        # more by the requests in flight and the one being handed on (3 x 2 MiB), not by
        # a pass (12 MiB)
        assert t.buffers.kept <= pooled + 3 * 2 * MiB
    finally:
        t.close()


def test_http_resumes_after_dropped_connections(snap: dict[str, Any]) -> None:
    lab = snap["lab"]
    relay = CuttingRelay((lab.host, lab.port), cut_after=1 * MiB + 777, cuts=3)
    vc = dataclasses.replace(snap["vc"], url=f"https://127.0.0.1:{relay.port}/sdk")
    t = HttpTransport(HttpSettings(backoff=0.01), VCenterDirectory([vc]))
    try:
        with t.open(snap["source"]) as r:
            got = _read_all(r, step=4 * MiB)
            assert r.resumes >= 3  # type: ignore[attr-defined]
        _check(snap, got)
        assert relay.cuts_done == 3
    finally:
        t.close()
        relay.close()


@pytest.mark.parametrize("in_flight", [1, 2])
def test_http_reads_adjacent_ranges_with_one_request_each_run(
    snap: dict[str, Any], monkeypatch: pytest.MonkeyPatch, in_flight: int
) -> None:
    """Adjacent ranges share a GET of up to request_bytes; a gap or the limit starts the
    next one; every range still gets exactly its own bytes in its own buffer, in order,
    also when requests run side by side."""
    gets: list[int] = []
    real_get = HttpReader._get

    def counting_get(self: HttpReader, *args: Any) -> tuple[int, bool]:
        gets.append(args[-1])  # the length of the request's run
        return real_get(self, *args)

    monkeypatch.setattr(HttpReader, "_get", counting_get)
    settings = HttpSettings(request_bytes=2 * MiB, requests_in_flight=in_flight)
    t = HttpTransport(settings, VCenterDirectory([snap["vc"]]))
    cap = snap["source"].capacity
    k = 256 * 1024
    ranges = [(o, MiB) for o in range(0, 6 * MiB, MiB)]  # 6 adjacent: 2 + 2 + 2
    ranges += [(26 * k, k), (27 * k, MiB)]  # after a gap: one run of 1.25 MiB
    ranges += [(8 * MiB, 3 * MiB)]  # larger than the limit on its own: still one request
    assert ranges[-1][0] + ranges[-1][1] <= cap
    try:
        with t.open(snap["source"]) as r:
            got = list(r.read_many(iter(ranges)))
    finally:
        t.close()
    expected = [2 * MiB, 2 * MiB, 2 * MiB, MiB + k, 3 * MiB]
    # side by side, a later request may reach the server first
    assert (gets if in_flight == 1 else sorted(gets)) == (
        expected if in_flight == 1 else sorted(expected)
    )
    assert [o for o, _ in got] == [o for o, _ in ranges]
    for (off, ln), (_, data) in zip(ranges, got, strict=True):
        assert isinstance(data, bytearray) and data == snap["frozen"][off : off + ln]


def test_http_keeps_requests_in_flight_side_by_side(
    snap: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With requests_in_flight = 2 the next GET is under way while the caller still holds
    the chunks of the one before; the chunks still come in disk order, exact."""
    lock = threading.Lock()
    running = 0
    most = 0
    real_get = HttpReader._get

    def watching_get(self: HttpReader, *args: Any) -> tuple[int, bool]:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            time.sleep(0.05)  # long enough for the next request to start meanwhile
            return real_get(self, *args)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(HttpReader, "_get", watching_get)
    settings = HttpSettings(request_bytes=MiB, requests_in_flight=2)
    t = HttpTransport(settings, VCenterDirectory([snap["vc"]]))
    ranges = [(o, MiB) for o in range(0, 8 * MiB, MiB)]
    try:
        with t.open(snap["source"]) as r:
            got = list(r.read_many(ranges))
            server = t.server("lab")
    finally:
        t.close()
    assert most == 2
    assert server.opened == 2  # one connection per request in flight, kept alive
    assert [o for o, _ in got] == [o for o, _ in ranges]
    for off, data in got:
        assert data == snap["frozen"][off : off + MiB]


def _http_read_threads() -> list[threading.Thread]:
    return [th for th in threading.enumerate() if th.name.startswith("http-read")]


def test_http_failed_request_in_flight_fails_the_read_and_stops_the_others(
    snap: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request that fails while another is in flight fails read_many with its error
    after the chunks before it; no reading thread outlives the read, also when the
    caller stops early."""
    real_get = HttpReader._get

    def failing_get(self: HttpReader, conn: Any, cookie: str, views: Any, offset: int, *a: Any):
        if offset == 3 * MiB:
            raise DiskNotFoundError("injected: the datastore went away")
        return real_get(self, conn, cookie, views, offset, *a)

    monkeypatch.setattr(HttpReader, "_get", failing_get)
    settings = HttpSettings(request_bytes=MiB, requests_in_flight=2)
    t = HttpTransport(settings, VCenterDirectory([snap["vc"]]))
    ranges = [(o, MiB) for o in range(0, 8 * MiB, MiB)]
    got: list[int] = []
    try:
        with t.open(snap["source"]) as r:
            with pytest.raises(DiskNotFoundError, match="injected"):
                for off, data in r.read_many(ranges):
                    assert data == snap["frozen"][off : off + MiB]
                    got.append(off)
            assert got == [0, MiB, 2 * MiB]
            assert _http_read_threads() == []
            it = r.read_many(ranges[:2])
            assert next(it)[0] == 0
            it.close()  # the caller stops early (an aborted task)
            assert _http_read_threads() == []
    finally:
        t.close()


def test_http_refuses_a_wrong_certificate_pin(snap: dict[str, Any]) -> None:
    vc = dataclasses.replace(snap["vc"], thumbprint=":".join(["00"] * 32))
    t = HttpTransport(HttpSettings(retries=0), VCenterDirectory([vc]))
    try:
        with pytest.raises(TlsError), t.open(snap["source"]) as r:
            r.read(0, 4096)
    finally:
        t.close()
    # default verification (no pin, no CA bundle) rejects the lab's self-signed certificate
    plain = dataclasses.replace(snap["vc"], thumbprint="")
    t = HttpTransport(HttpSettings(retries=0), VCenterDirectory([plain]))
    try:
        with pytest.raises(TlsError), t.open(snap["source"]) as r:
            r.read(0, 4096)
    finally:
        t.close()
