"""changeId parsing and the QueryChangedDiskAreas loop checks (pure logic)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordinator import cbt
from coordinator.changeid import ChangeId, ChangeIdError, parse, same_epoch

UUID = "52 de c0 d9 2b 4f 1a 3e-8b 7c 51 6d 2e 4f 0a 11"


def test_parse_real_change_id() -> None:
    c = parse(f"{UUID}/17")
    assert c == ChangeId(UUID, 17)
    assert str(c) == f"{UUID}/17"


@pytest.mark.parametrize("bad", ["", "*", "abc", "/5", f"{UUID}/", f"{UUID}/x", "a/b/3", "u/-1"])
def test_parse_rejects(bad: str) -> None:
    with pytest.raises(ChangeIdError):
        parse(bad)


@given(st.text(min_size=1).filter(lambda s: "/" not in s and s.strip()), st.integers(0, 2**63))
def test_parse_roundtrip(uuid: str, seq: int) -> None:
    assert parse(f"{uuid}/{seq}") == ChangeId(uuid, seq)


@given(st.text())
def test_parse_never_raises_anything_else(text: str) -> None:
    with contextlib.suppress(ChangeIdError):
        parse(text)


def test_same_epoch() -> None:
    assert same_epoch(f"{UUID}/3", f"{UUID}/9")
    assert not same_epoch(f"{UUID}/3", "52 00/9")
    assert not same_epoch("garbage", f"{UUID}/9")


@dataclass
class Area:
    start: int
    length: int


@dataclass
class Reply:
    startOffset: int
    length: int
    changedArea: list[Area] = field(default_factory=list)


def paged_server(areas: list[tuple[int, int]], capacity: int, per_reply: int):
    """Answers like ESXi: at most ``per_reply`` areas, reply length up to the next area."""
    calls: list[int] = []

    def query(offset: int) -> Reply:
        calls.append(offset)
        rest = [a for a in areas if a[0] >= offset]
        page = rest[:per_reply]
        end = rest[per_reply][0] if len(rest) > per_reply else capacity
        return Reply(offset, end - offset, [Area(s, n) for s, n in page])

    return query, calls


def test_loop_collects_every_page() -> None:
    cap = 10_000 * 4096
    areas = [(i * 4096, 512) for i in range(0, 10_000, 2)]  # 5000 areas
    query, calls = paged_server(areas, cap, 2000)
    got = cbt.changed_areas(query, cap)
    assert got == areas
    assert len(calls) == 3  # 2000 + 2000 + 1000


def test_one_reply_for_whole_disk() -> None:
    query, calls = paged_server([(0, 10)], 100, 2000)
    assert cbt.changed_areas(query, 100) == [(0, 10)]
    assert calls == [0]


@pytest.mark.parametrize(
    ("reply", "match"),
    [
        (Reply(5, 95), "starts at 5, asked for 0"),
        (Reply(0, 0), "makes no progress"),
        (Reply(0, 200), "past the capacity"),
        (Reply(0, 50, [Area(40, 20)]), "outside its span"),
        (Reply(0, 100, [Area(10, -1)]), "outside its span"),
    ],
)
def test_inconsistent_replies_fail(reply: Reply, match: str) -> None:
    with pytest.raises(cbt.CbtInconsistent, match=match):
        cbt.changed_areas(lambda off: reply, 100)


def test_second_reply_not_where_asked() -> None:
    replies = iter([Reply(0, 50), Reply(40, 60)])
    with pytest.raises(cbt.CbtInconsistent, match="reply 2: starts at 40, asked for 50"):
        cbt.changed_areas(lambda off: next(replies), 100)


def test_fault_classification() -> None:
    from pyVmomi import vim, vmodl

    assert isinstance(cbt.classify_fault(vmodl.fault.MethodNotFound()), cbt.CbtNotAnswered)
    assert isinstance(cbt.classify_fault(vim.fault.FileFault(file="x")), cbt.CbtInvalidBase)
    assert isinstance(cbt.classify_fault(vmodl.fault.InvalidArgument()), cbt.CbtInvalidBase)
    other = cbt.classify_fault(vim.fault.InvalidState())
    assert type(other) is cbt.CbtError
    assert "InvalidState" in other.reason
