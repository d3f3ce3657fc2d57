from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy_worker.errors import OutOfRangeError, TaskError
from proxy_worker.transports.base import (
    Extent,
    check_range,
    flat_file,
    normalize_extents,
    split_disk_file,
)


def test_flat_file_naming_rule() -> None:
    assert flat_file("[ds1] vm/vm.vmdk") == ("ds1", "vm/vm-flat.vmdk")
    assert flat_file("[my ds (2)] a b/ü.vmdk") == ("my ds (2)", "a b/ü-flat.vmdk")
    assert flat_file("[ds] vm/vm-flat.vmdk") == ("ds", "vm/vm-flat.vmdk")
    assert flat_file("[ds] vm/vm-000001.vmdk") == ("ds", "vm/vm-000001-flat.vmdk")


@pytest.mark.parametrize(
    "bad", ["vm/vm.vmdk", "[ds]", "[ds] ", "[ds] ../etc/passwd.vmdk", "[ds] /abs.vmdk", "[] x.vmdk"]
)
def test_bad_disk_file_names_the_problem(bad: str) -> None:
    with pytest.raises(TaskError, match="disk file"):
        split_disk_file(bad)


def test_flat_file_needs_vmdk() -> None:
    with pytest.raises(TaskError, match=r"\.vmdk"):
        flat_file("[ds] vm/disk.img")


def test_check_range() -> None:
    check_range(0, 10, 10)
    with pytest.raises(OutOfRangeError, match="past capacity 10"):
        check_range(5, 6, 10)
    with pytest.raises(OutOfRangeError):
        check_range(-1, 1, 10)


@given(
    st.lists(st.tuples(st.integers(0, 200), st.integers(1, 50), st.booleans()), max_size=12),
    st.integers(0, 100),
    st.integers(0, 150),
)
def test_normalize_extents_covers_range_exactly(
    raw: list[tuple[int, int, bool]], offset: int, length: int
) -> None:
    # Sources report non-overlapping extents; build such a list from the random draws.
    exts: list[Extent] = []
    pos = 0
    for gap, ln, data in raw:
        pos += gap % 7
        exts.append(Extent(pos, ln, data))
        pos += ln
    out = normalize_extents(exts, offset, length)
    # exact cover, in order, no empty pieces, neighbours differ in kind
    p = offset
    for e in out:
        assert e.offset == p and e.length > 0
        p = e.end
    assert p == offset + length
    for a, b in itertools.pairwise(out):
        assert a.data != b.data
    # every byte's kind: zero only where a source extent said so
    for e in out:
        if not e.data:
            for b in range(e.offset, e.end):
                assert any(x.offset <= b < x.end and not x.data for x in exts)
