"""Full/incremental decisions, range alignment and task cutting."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from coordinator import planner
from coordinator.planner import FULL, INCREMENTAL, PreviousDisk, decide

U = "52 aa bb/"
MiB = 2**20


def test_incremental_when_everything_matches() -> None:
    d = decide(PreviousDisk("p1", U + "4", 100), U + "9", 100)
    assert d.mode == INCREMENTAL
    assert d.base_change_id == U + "4" and d.base_point_id == "p1"


def test_full_reasons() -> None:
    prev = PreviousDisk("p1", U + "4", 100)
    cases = {
        "no previous restore point": decide(None, U + "9", 100),
        "CBT was reset": decide(prev, "52 cc dd/1", 100),
        "capacity grew (100 -> 200": decide(prev, U + "9", 200),
        "previous point has no changeId": decide(PreviousDisk("p", "", 100), U + "1", 100),
        "snapshot disk has no changeId": decide(prev, "", 100),
        "just enabled": decide(prev, U + "9", 100, cbt_just_enabled=True),
        "periodic": decide(prev, U + "9", 100, force_full_reason="periodic full (7 days)"),
        "unusable changeId": decide(PreviousDisk("p", "junk", 100), U + "1", 100),
        "names 2 damaged (quarantined) chunk(s)": decide(
            PreviousDisk("p1", U + "4", 100, damaged_chunks=2), U + "9", 100
        ),
    }
    for text, d in cases.items():
        assert d.mode == FULL, text
        assert text in d.reason, (text, d.reason)
        assert d.code and not d.base_point_id


def test_align_and_merge() -> None:
    cs = 4 * MiB
    cap = 10 * MiB + 123
    got = planner.align([(1, 2), (4 * MiB - 1, 2), (10 * MiB + 100, 23)], cs, cap)
    # first two grow to chunks 0 and 1 and merge; the last ends at the capacity
    assert got == [(0, cap)]  # touching ranges merge
    got = planner.align([(1, 2), (9 * MiB, 5)], cs, cap)
    assert got == [(0, cs), (8 * MiB, cap - 8 * MiB)]


def test_cut_bounds_and_ids() -> None:
    cs = MiB
    ranges = [(0, 10 * MiB), (20 * MiB, 3 * MiB), (40 * MiB, MiB)]
    tasks = planner.cut(ranges, 4 * MiB, cs)
    assert [sum(n for _, n in t) for t in tasks] == [4 * MiB, 4 * MiB, 4 * MiB, 2 * MiB]
    assert tasks[2] == [(8 * MiB, 2 * MiB), (20 * MiB, 2 * MiB)]
    a = planner.task_id("j", "vm", 2000, tasks[0])
    assert a == planner.task_id("j", "vm", 2000, tasks[0])
    assert a != planner.task_id("j2", "vm", 2000, tasks[0])
    assert a != planner.task_id("j", "vm", 2001, tasks[0])


areas_st = st.lists(st.tuples(st.integers(0, 10**7), st.integers(0, 10**6)), max_size=40)


@given(areas_st, st.sampled_from([4096, 65536, MiB]), st.integers(1, 10))
def test_plan_covers_every_changed_byte(areas, chunk, per_task_chunks) -> None:
    cap = 11 * 10**6 + 7
    areas = [(o, min(n, cap - o)) for o, n in areas]
    ranges = planner.align(areas, chunk, cap)
    tasks = planner.cut(ranges, per_task_chunks * chunk, chunk)
    covered = [r for t in tasks for r in t]
    # every range aligned: starts on a chunk, ends on a chunk or at the capacity
    for off, n in covered:
        assert off % chunk == 0 and ((off + n) % chunk == 0 or off + n == cap)
        assert n > 0 and off + n <= cap
    for t in tasks:
        assert sum(n for _, n in t) <= per_task_chunks * chunk
    # no byte twice, every changed byte in some range
    flat = sorted(covered)
    for (o1, n1), (o2, _) in itertools.pairwise(flat):
        assert o1 + n1 <= o2
    for off, n in areas:
        if n:
            assert any(o <= off and off + n <= o + m for o, m in ranges)


def test_chunk_indexes() -> None:
    assert planner.chunk_indexes([(0, 3 * MiB), (8 * MiB, MiB + 5)], MiB) == [0, 1, 2, 8, 9]
