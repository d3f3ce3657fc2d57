"""Open packs written with O_DIRECT: the same bytes as buffered writes, recovery intact."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from repository import blob, direct_append, pack_format, pack_writer
from repository.direct_append import BLOCK, BUFFER, DirectAppender
from repository.pack_writer import Blob, OpenPack

SIZES = (1, 5000, 4096 - 61, 300_000, BUFFER + 12345, 77)  # crossing blocks and the buffer


def blobs(seed: int, sizes: tuple[int, ...] = SIZES) -> list[Blob]:
    out: list[Blob] = []
    for i, n in enumerate(sizes):
        payload = bytes([(seed + i) % 251]) * n
        header, body = blob.encode(payload, n, False, blob.MAGIC_CHUNK, None)
        out.append((bytes([seed, i]) * 16, [header, body]))
    return out


class BufferedPack(OpenPack):
    direct = False


def write_pack(root: Path, cls: type[OpenPack], batches: int) -> OpenPack:
    (root / "index").mkdir(parents=True, exist_ok=True)
    pack = cls(root)
    for b in range(batches):
        pack.append(blobs(b, SIZES[b % 3 :]))
    return pack


def is_direct(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)


def test_a_direct_pack_holds_the_bytes_a_buffered_one_does(tmp_path: Path) -> None:
    direct = write_pack(tmp_path / "d", OpenPack, 4)
    buffered = write_pack(tmp_path / "b", BufferedPack, 4)
    assert is_direct(direct._fd) and not is_direct(buffered._fd)
    # open: zero padded up to a block, the records the same
    st = os.stat(direct.path)
    assert st.st_size % BLOCK == 0 and 0 <= st.st_size - direct.size < BLOCK
    d_bytes, b_bytes = direct.path.read_bytes(), buffered.path.read_bytes()
    assert d_bytes[pack_format.HEADER_LEN : direct.size] == b_bytes[pack_format.HEADER_LEN :]
    assert d_bytes[direct.size :] == bytes(len(d_bytes) - direct.size)
    for pack in (direct, buffered):
        pack.seal()
    d_sealed = pack_writer.sealed_path(tmp_path / "d", direct.id).read_bytes()
    b_sealed = pack_writer.sealed_path(tmp_path / "b", buffered.id).read_bytes()
    assert len(d_sealed) == len(b_sealed)  # cut to its length at seal
    assert d_sealed[pack_format.HEADER_LEN :] == b_sealed[pack_format.HEADER_LEN :]
    assert pack_format.parse_trailer(d_sealed, "direct") == direct.entries


def test_an_abandoned_direct_pack_recovers_exactly_its_durable_records(tmp_path: Path) -> None:
    root = tmp_path / "r"
    pack = write_pack(root, OpenPack, 3)
    durable = list(pack.entries)
    os.close(pack._fd)  # the writer is gone, its lock with it
    os.close(pack._log)
    size_range = (blob.HEADER_LEN, 2 * BUFFER)
    assert pack_writer.recover(root, size_range) == 1
    sealed = pack_writer.sealed_path(root, pack.id).read_bytes()
    assert pack_format.parse_trailer(sealed, "recovered") == durable


def test_a_batch_whose_sync_failed_leaves_the_pack_on_buffered_writes(tmp_path: Path) -> None:
    (tmp_path / "index").mkdir()
    pack = OpenPack(tmp_path)
    pack.append(blobs(1))
    assert pack._direct is not None
    # what append does when fdatasync fails after the write: the file cut back
    pack._direct.append([b"x" * 100])
    os.ftruncate(pack._fd, pack.size)
    pack.append(blobs(2))
    assert pack._direct is None and not is_direct(pack._fd)
    pack.seal()
    sealed = pack_writer.sealed_path(tmp_path, pack.id).read_bytes()
    assert pack_format.parse_trailer(sealed, "sealed") == pack.entries
    scanned = list(pack_format.scan_records(sealed, (blob.HEADER_LEN, 2 * BUFFER)))
    assert scanned == pack.entries


def test_refused_o_direct_is_logged_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(direct_append, "_refused_logged", False)
    fd = os.open("/dev/null", os.O_WRONLY)  # a device: O_DIRECT refused with EINVAL
    try:
        with capture_logs() as logs:
            assert not direct_append.enable(fd, "pack one")
            assert not direct_append.enable(fd, "pack two")
    finally:
        os.close(fd)
    assert [e["event"] for e in logs] == ["pack_direct_io_refused"]
    assert logs[0]["pack"] == "pack one" and "Invalid argument" in logs[0]["error"]


def test_a_head_of_a_block_or_more_is_refused() -> None:
    with pytest.raises(ValueError, match="head of 4096 bytes: must be under 4096"):
        DirectAppender(-1, bytes(BLOCK))
