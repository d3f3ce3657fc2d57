"""`vmbackup export` through real nbdkit and real NBD clients (nbdcopy, nbdinfo, libnbd):
the export is the disk `vmbackup restore` writes, byte for byte; a writable export keeps
its writes out of the repository; a damaged chunk is an I/O error to the client; SIGTERM
and SIGINT stop it and leave nothing behind."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import urllib.request
from pathlib import Path

import nbd
import pytest

from repository.import_disk import import_disk
from repository.repository import Repository
from tests.export.conftest import free_port
from tests.repository.conftest import CS, damage_chunk, make_image
from tests.repository.test_cli import vmb


def _tree(root: Path) -> dict[str, tuple[str, int]]:
    """Every file of the repository: its content's hash and mtime."""
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _two_points(repo: Repository, tmp: Path) -> tuple[str, bytes]:
    """An incremental point (a synthetic full over a first backup) and its disk's bytes."""
    img = tmp / "d.img"
    data = bytearray(make_image(img, "rzztdrrzzzrtzzs", seed=5))
    import_disk(repo, "web1", 2000, img)
    data[3 * CS + 100 : 3 * CS + 5000] = os.urandom(4900)  # changed after the first backup
    data[9 * CS : 10 * CS] = os.urandom(CS)  # a zero chunk becomes data
    img.write_bytes(data)
    return import_disk(repo, "web1", 2000, img).point_id, bytes(data)


def _client(uri: str) -> nbd.NBD:
    h = nbd.NBD()
    h.connect_uri(uri)
    return h


def test_the_export_is_the_restored_disk_byte_for_byte(
    repo: Repository, tmp_path: Path, start_export
) -> None:
    point, data = _two_points(repo, tmp_path)
    restored = tmp_path / "restored.img"
    r = vmb(
        "restore",
        "--repo",
        str(repo.path),
        "--point",
        point,
        "--disk",
        "2000",
        "--out",
        str(restored),
        "--no-fsync",
    )
    assert r.returncode == 0, r.stderr
    ov = tmp_path / "ov"
    ov.mkdir()
    sock = tmp_path / "nbd.sock"
    ex = start_export(
        "--repo",
        str(repo.path),
        "--point",
        point,
        "--vm",
        "web1",
        "--disk",
        "2000",
        "--socket",
        str(sock),
        "--overlay-dir",
        str(ov),
        "--cache-mib",
        "1",
    )
    assert ex.uri == f"nbd+unix:///?socket={sock}"
    assert ex.serving["size"] == len(data) and ex.serving["writable"] is False
    copy = tmp_path / "copy.img"
    subprocess.run(["nbdcopy", ex.uri, str(copy)], check=True, timeout=120)
    assert copy.read_bytes() == restored.read_bytes() == data
    h = _client(ex.uri)
    assert h.is_read_only() and h.get_size() == len(data)
    rnd = random.Random(7)
    for _ in range(1000):
        off = rnd.randrange(len(data))
        n = rnd.randint(1, min(64 * 1024, len(data) - off))
        assert h.pread(n, off) == data[off : off + n], (off, n)
    with pytest.raises(nbd.Error):  # read-only: a write is refused by the server
        h.pwrite(b"x" * 512, 0)
    h.shutdown()
    assert ex.stop() == 0, ex.stderr
    assert ex.stopped["event"] == "stopped" and ex.stopped["signalled"] is True
    assert ex.stopped["read_errors"] == 0 and ex.stopped["bytes_read"] >= 2 * len(data) // 3
    assert ex.stopped["cache_hits"] > 0 and ex.stopped["cache_misses"] > 0
    assert not list(ov.iterdir()) and not sock.exists()  # nothing left behind


def test_writes_stay_in_the_overlay_never_in_the_repository(
    repo: Repository, tmp_path: Path, start_export
) -> None:
    point, data = _two_points(repo, tmp_path)
    before = _tree(repo.path)
    ov = tmp_path / "ov"
    ov.mkdir()
    ex = start_export(
        "--repo",
        str(repo.path),
        "--point",
        point,
        "--disk",
        "2000",
        "--socket",
        str(tmp_path / "s"),
        "--writable",
        "--overlay-dir",
        str(ov),
    )
    assert ex.serving["writable"] is True
    h = _client(ex.uri)
    assert not h.is_read_only()
    expect = bytearray(data)
    rnd = random.Random(3)
    for _ in range(20):  # into data chunks, zero chunks and across chunk boundaries
        off = rnd.randrange(len(data) - 70000)
        new = os.urandom(rnd.randint(1, 70000))
        h.pwrite(new, off)
        expect[off : off + len(new)] = new
    h.flush()
    assert h.pread(len(expect), 0) == bytes(expect)
    second = _client(ex.uri)  # another client sees the same writes
    assert second.pread(len(expect), 0) == bytes(expect)
    h.shutdown()
    second.shutdown()
    assert ex.stop() == 0, ex.stderr
    assert not list(ov.iterdir())  # the overlay is gone
    assert _tree(repo.path) == before  # not a byte, not an mtime of the repository changed
    assert vmb("verify", "--repo", str(repo.path)).returncode == 0
    again = start_export(
        "--repo",
        str(repo.path),
        "--point",
        point,
        "--disk",
        "2000",
        "--socket",
        str(tmp_path / "s2"),
    )
    assert _client(again.uri).pread(len(data), 0) == data


def test_a_damaged_chunk_is_an_io_error_never_wrong_bytes(
    repo: Repository, tmp_path: Path, start_export
) -> None:
    point, data = _two_points(repo, tmp_path)
    victim = data[5 * CS : 6 * CS]  # chunk 5: random, stored once
    damage_chunk(repo, repo.chunk_id(victim), 200)
    ex = start_export(
        "--repo",
        str(repo.path),
        "--point",
        point,
        "--disk",
        "2000",
        "--socket",
        str(tmp_path / "s"),
    )
    h = _client(ex.uri)
    assert h.pread(4096, 0) == data[:4096]
    for _ in range(2):  # every read of it fails, none is served from a cache
        with pytest.raises(nbd.Error) as err:
            h.pread(8192, 5 * CS + 4096)
        assert err.value.errno == "EIO"  # libnbd names it
    with pytest.raises(nbd.Error):  # a read that only touches it
        h.pread(CS + 10, 5 * CS - 5)
    assert h.pread(4096, 6 * CS) == data[6 * CS : 6 * CS + 4096]  # the rest still reads
    copy = subprocess.run(
        ["nbdcopy", ex.uri, str(tmp_path / "c.img")], capture_output=True, timeout=120, check=False
    )
    assert copy.returncode != 0  # a whole copy fails, never completes with wrong bytes
    assert h.pread(10, 0) == data[:10]  # and the export still serves
    assert ex.stop() == 0 and ex.stopped["nbdkit_status"] == 0, ex.stderr  # never aborted
    assert ex.stopped["read_errors"] >= 3
    assert (
        "read failed: EIO to the client" in ex.stderr and f"chunk #5 (offset {5 * CS})" in ex.stderr
    )


def test_an_encrypted_repository_passphrase_never_reaches_nbdkit_argv_or_environment(
    enc_repo: Repository, tmp_path: Path, start_export
) -> None:
    point, data = _two_points(enc_repo, tmp_path)
    secret = "correct horse"
    ex = start_export(
        "--repo",
        str(enc_repo.path),
        "--point",
        point,
        "--disk",
        "2000",
        "--socket",
        str(tmp_path / "s"),
        env={"VMBACKUP_PASSPHRASE": secret},
    )
    assert _client(ex.uri).pread(len(data), 0) == data
    pid = ex.serving["pid"]
    for what in ("cmdline", "environ"):
        assert secret.encode() not in Path(f"/proc/{pid}/{what}").read_bytes(), what
    assert ex.stop() == 0


def test_tcp_listen_metrics_and_sigint(repo: Repository, tmp_path: Path, start_export) -> None:
    point, _ = _two_points(repo, tmp_path)
    port, mport = free_port(), free_port()
    ex = start_export(
        "--repo",
        str(repo.path),
        "--point",
        point,
        "--disk",
        "2000",
        "--listen",
        f"127.0.0.1:{port}",
        "--metrics-port",
        str(mport),
    )
    assert ex.uri == f"nbd://127.0.0.1:{port}/"
    info = subprocess.run(
        ["nbdinfo", "--map", ex.uri], capture_output=True, text=True, timeout=60, check=True
    )
    assert "hole,zero" in info.stdout  # zero chunks are advertised as extents
    h = _client(ex.uri)
    h.pread(CS, 0)
    h.pread(CS, 0)
    text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10).read().decode()
    values = {
        ln.split()[0]: float(ln.split()[1])
        for ln in text.splitlines()
        if ln.startswith("vmbackup_export_")
    }
    assert values["vmbackup_export_open"] == 1 and values["vmbackup_export_connections"] >= 1
    assert values["vmbackup_export_read_bytes_total"] >= 2 * CS
    assert values["vmbackup_export_cache_hits_total"] >= 1
    assert values["vmbackup_export_cache_misses_total"] >= 1
    # Ctrl-C stops it as SIGTERM does, a connected idle client included (nbdkit alone
    # would wait for its next request), with the plugin's cleanup run: its stats
    assert ex.stop(signal.SIGINT) == 0, ex.stderr
    assert ex.stopped["signalled"] is True and ex.stopped["nbdkit_status"] == 0
    assert ex.stopped["bytes_read"] == 2 * CS
    with pytest.raises(nbd.Error):
        h.pread(10, 0)


def test_refused_before_nbdkit_starts(repo: Repository, tmp_path: Path) -> None:
    point, _ = _two_points(repo, tmp_path)
    base = ["export", "--repo", str(repo.path), "--point", point]
    r = vmb(*base, "--disk", "2000", "--vm", "db9", "--socket", str(tmp_path / "s"))
    assert r.returncode == 1 and b"is of VM 'web1'" in r.stderr and b"not 'db9'" in r.stderr
    r = vmb(*base, "--disk", "7", "--socket", str(tmp_path / "s"))
    assert r.returncode == 1 and b"has no disk 7; its disks: 2000" in r.stderr
    r = vmb(*base, "--disk", "2000", "--listen", "127.0.0.1:http")
    assert r.returncode == 1 and b"--listen: not a port" in r.stderr
    r = vmb(*base, "--disk", "2000", "--cache-mib", "0")
    assert r.returncode == 2 and b"must be at least 1" in r.stderr
    assert not (tmp_path / "s").exists()
