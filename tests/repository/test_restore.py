"""Restore targets: sparse regular files, devices, streams; import with and without threads."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from repository.import_disk import import_disk
from repository.repository import Repository
from repository.restore import restore_disk
from tests.repository.conftest import CS, make_image


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("sync", [True, False])
def test_sparse_file_restore(repo: Repository, tmp_path: Path, workers: int, sync: bool) -> None:
    img = tmp_path / "d.img"
    data = make_image(img, "rzzzzztdzzzzzzzzrs" + "z" * 20)
    r = import_disk(repo, "vm", 1, img)
    out = tmp_path / "out.img"
    st = restore_disk(repo, r.point_id, 1, out, workers=workers, sync=sync)
    assert out.read_bytes() == data
    assert st.bytes_written == len(data) and st.zero_chunks == r.zero_chunks
    # zero chunks (also the trailing ones) are holes, not written blocks
    assert out.stat().st_blocks * 512 < len(data) // 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_grown_disk_reads_zeros_past_old_chunk(repo: Repository, tmp_path: Path) -> None:
    img = tmp_path / "d.img"
    data = make_image(img, "rrs")  # last chunk is short: 1000 bytes
    import_disk(repo, "vm", 1, img)
    grown = data + os.urandom(CS) + bytes(CS)
    img.write_bytes(grown)
    r2 = import_disk(repo, "vm", 1, img)
    for target in (tmp_path / "o", io.BytesIO()):
        restore_disk(repo, r2.point_id, 1, target)
        got = target.getvalue() if isinstance(target, io.BytesIO) else target.read_bytes()
        assert got == grown


def test_device_and_stream_targets_get_every_byte(repo: Repository, tmp_path: Path) -> None:
    img = tmp_path / "d.img"
    data = make_image(img, "rztz")
    r = import_disk(repo, "vm", 1, img)
    st = restore_disk(repo, r.point_id, 1, "/dev/null")  # a character device: a stream
    assert st.bytes_written == len(data) and st.chunks_read == 2 and st.zero_chunks == 2
    buf = io.BytesIO()
    restore_disk(repo, r.point_id, 1, buf, workers=0)
    assert buf.getvalue() == data


def test_import_threads_make_the_same_point(tmp_path: Path) -> None:
    img = tmp_path / "d.img"
    data = make_image(img, "rtzdrrdtzrrrrdrtzs" * 2, seed=3)
    maps = []
    for workers in (0, 2):
        repo = Repository.init(tmp_path / f"r{workers}", chunk_size=CS, compression_level=1)
        r = import_disk(repo, "vm", 1, img, workers=workers)
        maps.append(bytes(repo.load_map(r.point_id, 1).entries))
        restore_disk(repo, r.point_id, 1, tmp_path / "o")
        assert (tmp_path / "o").read_bytes() == data
        stored = sorted(p.name for p in (tmp_path / f"r{workers}").rglob("*") if p.is_file())
        maps.append(b"\n".join(n.encode() for n in stored if len(n) == 64))
        assert r.new_chunks + r.known_chunks + r.zero_chunks == r.chunks
    assert maps[0] == maps[2] and maps[1] == maps[3]


def test_block_device_gets_zeros_over_old_data(repo: Repository, tmp_path: Path) -> None:
    import shutil
    import subprocess

    backing = tmp_path / "loop.img"
    data = make_image(tmp_path / "d.img", "rzt")
    backing.write_bytes(b"\xff" * len(data))  # old content that the zero chunk must erase
    if shutil.which("losetup") is None or os.geteuid() != 0:
        pytest.skip("needs root and losetup for a loop block device")
    r = import_disk(repo, "vm", 1, tmp_path / "d.img")
    lo = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True, text=True)
    if lo.returncode != 0:
        pytest.skip(f"no loop device: {lo.stderr.strip()}")
    dev = lo.stdout.strip()
    try:
        st = restore_disk(repo, r.point_id, 1, dev)
    finally:
        subprocess.run(["losetup", "-d", dev], check=True)
    assert st.bytes_written == len(data)
    assert backing.read_bytes() == data
