"""The floor's accounting on small images: what it counts as new, what it stores."""

from __future__ import annotations

import random
from pathlib import Path

from bench.e2e_floor import floor_table, measure_floor
from common.chunk import compress

CS = 64 << 10


def test_the_floor_reads_every_chunk_and_stores_only_new_ones(tmp_path: Path) -> None:
    rnd = random.Random(7)
    text = (b"2024-05-01 backup of vm-17 done in 12 s\n" * (CS // 40 + 1))[:CS]
    unique = rnd.randbytes(CS)
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    a.write_bytes(text + bytes(CS) + unique + text[:1000])  # a short tail is a chunk too
    b.write_bytes(unique + bytes(CS) + text)  # every chunk already seen in a
    fl = measure_floor([a, b], CS, 3, tmp_path)
    assert (fl.chunks, fl.new_chunks) == (7, 3)  # text, unique, tail; zeros and repeats not
    want = sum(len(compress(c, 3)[0]) for c in (text, unique, text[:1000]))
    assert fl.stored_bytes == want
    assert not (tmp_path / "floor.pack").exists()
    assert min(fl.read, fl.proxy, fl.check, fl.store) >= 0 and fl.total > 0
    assert 0 <= fl.writer_sys <= fl.check + fl.store and 0 <= fl.writer_kernel_share <= 1
    lines = floor_table(fl, 2 * fl.total, {"borg-fixed": fl.total / 2})
    assert "% | 3 / 7 |" in lines[3] and lines[3].endswith("| 2.00 |")
    assert lines[-1].startswith("  floor / borg-fixed's full CPU: 2.00")


def test_holes_are_not_read(tmp_path: Path) -> None:
    img = tmp_path / "sparse.img"
    with open(img, "wb") as f:
        f.truncate(64 * CS)  # all hole
        f.seek(10 * CS + 5)
        f.write(b"x" * (CS + 10))  # data in chunks 10 and 11 only
    fl = measure_floor([img], CS, 3, tmp_path)
    assert (fl.chunks, fl.new_chunks) == (2, 2)
