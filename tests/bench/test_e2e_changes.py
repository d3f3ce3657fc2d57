"""The end-to-end benchmark's change sets: exact revert, budgets, worst-case layout."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.e2e_changes import ChangeSet, Disk, Write, guest_runs, isolated_writes

KiB = 1 << 10
MiB = 1 << 20


def make_disks(tmp: Path, sizes: list[int]) -> list[Disk]:
    disks = []
    rng = random.Random(1)
    for i, size in enumerate(sizes):
        path = tmp / f"d{i}-flat.vmdk"
        with open(path, "wb") as f:
            # Data in the first half, a hole after: reverting must put zeros back there.
            f.write(rng.randbytes(size // 2))
            f.truncate(size)
        disks.append(Disk(path, size, size // 2))
    return disks


def test_apply_then_revert_restores_every_byte(tmp_path: Path) -> None:
    disks = make_disks(tmp_path, [8 * MiB, 12 * MiB + 4096])
    before = [d.path.read_bytes() for d in disks]
    runs = guest_runs(disks, 0.05, seed=3)
    worst = isolated_writes(disks, 0.05, seed=3)
    runs.apply(disks)
    after_runs = [d.path.read_bytes() for d in disks]
    assert after_runs != before
    worst.apply(disks)  # on top, overlapping the first set in places
    for cs in (worst, runs):
        cs.revert(disks)
    assert [d.path.read_bytes() for d in disks] == before
    runs.apply(disks)  # the same set applied again writes the same bytes
    assert [d.path.read_bytes() for d in disks] == after_runs


def test_apply_twice_is_refused(tmp_path: Path) -> None:
    disks = make_disks(tmp_path, [4 * MiB])
    cs = guest_runs(disks, 0.1, seed=1)
    cs.apply(disks)
    with pytest.raises(RuntimeError, match="already applied"):
        cs.apply(disks)


def test_budgets_and_shapes(tmp_path: Path) -> None:
    disks = make_disks(tmp_path, [64 * MiB, 32 * MiB])
    allocated = sum(d.allocated for d in disks)
    runs = guest_runs(disks, 0.01, seed=5)
    assert runs.bytes_written == pytest.approx(allocated * 0.01, abs=4 * KiB)
    for w in runs.writes:
        assert w.offset % (4 * KiB) == 0 and w.length % (4 * KiB) == 0
        assert 4 * KiB <= w.length <= 8 * MiB
        assert w.offset + w.length <= disks[w.disk].capacity
    worst = isolated_writes(disks, 0.01, seed=5)
    chunks = {(w.disk, w.offset // MiB) for w in worst.writes}
    assert len(chunks) == len(worst.writes)  # one write per chunk
    assert all(w.length == 64 * KiB for w in worst.writes)
    assert all(w.offset // MiB == (w.offset + w.length - 1) // MiB for w in worst.writes)
    assert worst.changed_bytes() == worst.bytes_written


def test_too_many_isolated_writes_is_a_clear_error(tmp_path: Path) -> None:
    disks = make_disks(tmp_path, [2 * MiB])
    with pytest.raises(ValueError, match="do not fit"):
        isolated_writes(disks, 0.9, seed=1)


@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 200), st.integers(1, 50)), max_size=30))
def test_changed_bytes_counts_each_byte_once(spans: list[tuple[int, int, int]]) -> None:
    cs = ChangeSet("x", [Write(d, off, n, 0) for d, off, n in spans])
    touched = {(d, b) for d, off, n in spans for b in range(off, off + n)}
    assert cs.changed_bytes() == len(touched)
    assert cs.disks_touched() == {d for d, _, _ in spans}
