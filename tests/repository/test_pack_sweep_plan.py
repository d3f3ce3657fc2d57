"""gc's pack rules (repository/pack_sweep_plan.py), shared by the local and S3 sweeps."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from repository.pack_index_file import Location
from repository.pack_sweep_plan import plan_sweep


def _pack(
    name: bytes, ids: list[bytes], length: int = 100
) -> tuple[bytes, list[tuple[bytes, Location]]]:
    return name, [(c, Location(name, i * length, length)) for i, c in enumerate(ids)]


def test_young_packs_stay_dead_ones_go_mostly_live_ones_stay_others_are_rewritten() -> None:
    ids = [bytes([i]) * 32 for i in range(40)]
    by_pack = dict(
        [
            _pack(b"young", ids[0:2]),  # nothing live, but young: stays
            _pack(b"dead", ids[2:4]),  # nothing live: dropped
            _pack(b"mostly", ids[4:24]),  # 1 of 20 dead (5 %): stays
            _pack(b"half", ids[24:28]),  # 2 of 4 dead: its 2 live ones copied
        ]
    )
    live = set(ids[4:23]) | set(ids[24:26])
    plan = plan_sweep(by_pack, live, lambda p: p == b"young")
    assert plan.drop == [b"dead"] and list(plan.rewrite) == [b"half"]
    assert [c for c, _ in plan.rewrite[b"half"]] == ids[24:26]
    assert plan.chunks_seen == 28 and plan.kept_young == 2
    assert plan.chunks_removed == 4 and plan.bytes_freed == 400
    assert plan.changed == {b"dead", b"half"}


def test_a_second_copy_of_a_live_id_is_dead_and_a_veto_keeps_a_pack_whole() -> None:
    a, b = b"a" * 32, b"b" * 32
    by_pack = dict([_pack(b"p1", [a]), _pack(b"p2", [a, b])])
    plan = plan_sweep(by_pack, {a}, lambda _p: False)
    assert plan.drop == [b"p2"] and plan.rewrite == {}  # a stays in p1, b is dead
    vetoed = plan_sweep(by_pack, {a}, lambda _p: False, may_change=lambda p: p != b"p2")
    assert vetoed.drop == [] and vetoed.rewrite == {} and vetoed.kept == {a, b}


packs = st.dictionaries(
    st.binary(min_size=2, max_size=2),
    st.lists(st.integers(0, 30), min_size=1, max_size=12),
    max_size=8,
)


@given(packs, st.sets(st.integers(0, 30)), st.sets(st.binary(min_size=2, max_size=2)))
def test_no_live_id_is_ever_lost(
    layout: dict[bytes, list[int]], live_n: set[int], young: set[bytes]
) -> None:
    by_pack = dict(_pack(p, [bytes([i]) * 32 for i in ids]) for p, ids in layout.items())
    live = {bytes([i]) * 32 for i in live_n}
    plan = plan_sweep(by_pack, live, lambda p: p in young)
    stays = {c for p, es in by_pack.items() if p not in plan.changed for c, _ in es}
    copied = {c for es in plan.rewrite.values() for c, _ in es}
    present = {c for es in by_pack.values() for c, _ in es}
    assert live & present <= stays | copied
    assert set(plan.drop).isdisjoint(young) and set(plan.rewrite).isdisjoint(young)
