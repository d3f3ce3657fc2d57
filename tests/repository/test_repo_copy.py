"""`repo copy` (repository/copy.py): points copied into a second repository of another
format or encryption restore bit-exact there, a second copy sends nothing, the filters
select what they say, and damage on either side is handled as the module says."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from repository.copy import SOURCE_POINT, SOURCE_REPOSITORY, copy_job_id, copy_points
from repository.copy_selection import CopyFilter, parse_age, plan_copy
from repository.errors import InvalidRequestError
from repository.gc import gc
from repository.import_disk import import_disk
from repository.points import Point
from repository.repair import repair
from repository.repository import Repository
from repository.restore import restore_disk
from repository.verify import verify
from tests.repository.conftest import CS, flip_bit

DAY = 86400.0
NOW = time.time()
EVERY = CopyFilter()


def new_repo(path: Path, *, packs: bool = False, passphrase: str | None = None) -> Repository:
    return Repository.init(
        path, chunk_size=CS, compression_level=1, passphrase=passphrase, kdf_n=1024, packs=packs
    )


def fill(
    repo: Repository, tmp: Path, vms: tuple[str, ...] = ("web", "db"), points: int = 3
) -> None:
    """``points`` points per VM a day apart (the newest a day old): a full, then
    incrementals changing a few chunks, one of them zeroing a chunk; text chunks compress."""
    rnd = random.Random(7)
    for vm in vms:
        chunks = [rnd.randbytes(CS) if i % 3 else (b"%d text " % i * CS)[:CS] for i in range(10)]
        chunks.append(bytes(CS))
        for n in range(points):
            if n:
                chunks[rnd.randrange(10)] = rnd.randbytes(CS)
                chunks[n] = bytes(CS) if n == 2 else chunks[n]
            img = tmp / f"{vm}.img"
            img.write_bytes(b"".join(chunks))
            import_disk(repo, vm, 2000, img, snapshot_time=NOW - (points - n) * DAY)


def restored(repo: Repository, point_id: str, disk: int, tmp: Path) -> bytes:
    out = tmp / f"restore-{repo.config['id']}-{point_id}-{disk}"
    restore_disk(repo, point_id, disk, out, sync=False)
    data = out.read_bytes()
    out.unlink()
    return data


def assert_same_points(src: Repository, dst: Repository, tmp: Path) -> int:
    """Every point of the target restores bit-exact against the source's restore."""
    n = 0
    for p in dst.points():
        for d in p.disks:
            assert restored(dst, p.id, d.key, tmp) == restored(src, p.id, d.key, tmp), p.id
            n += 1
    return n


@pytest.mark.parametrize(("src_packs", "dst_packs"), [(False, True), (True, False)])
def test_copy_across_formats_restores_bit_exact_and_a_second_copy_sends_nothing(
    tmp_path: Path, src_packs: bool, dst_packs: bool
) -> None:
    src = new_repo(tmp_path / "a", packs=src_packs)
    fill(src, tmp_path)
    src.close()
    dst = new_repo(tmp_path / "b", packs=dst_packs)
    r = copy_points(src, dst, EVERY)
    assert [c.id for c in r.copied] == [p.id for p in r.to_copy] and len(r.copied) == 6
    assert not r.failed and not r.present
    unique = {cid for p in src.points() for _, cid in src.load_map(p, 2000).iter_ids()}
    assert r.stats.chunks_sent == len(unique) == r.stats.chunks_read
    # same id key, no cipher: every blob went over as stored, never compressed again
    assert r.stats.blobs_as_stored == r.stats.chunks_sent
    dst.close()
    assert assert_same_points(src, dst, tmp_path) == 6
    assert verify(dst).ok
    for p in dst.points():
        assert p.disks[0].info[SOURCE_REPOSITORY] == src.config["id"]
        assert p.disks[0].info[SOURCE_POINT] == p.id
        # meta as the source's: a copy is not a new backup
        a = src.get_point(p.id)
        assert (p.job_id, p.vm_uuid, p.vm_name, p.snapshot_time, p.status) == (
            a.job_id,
            a.vm_uuid,
            a.vm_name,
            a.snapshot_time,
            a.status,
        )
        assert p.disks[0].base_point_id == a.disks[0].base_point_id
    assert dst.running_jobs() == []

    again = copy_points(src, dst, EVERY)
    assert not again.copied and len(again.present) == 6
    assert again.stats.chunks_sent == again.stats.bytes_sent == again.stats.chunks_read == 0


def test_plain_to_encrypted_to_plain(tmp_path: Path) -> None:
    src = new_repo(tmp_path / "a")
    fill(src, tmp_path)
    enc = new_repo(tmp_path / "e", packs=True, passphrase="site b")
    r = copy_points(src, enc, EVERY)
    assert len(r.copied) == 6 and r.stats.blobs_as_stored == 0  # re-encrypted, new ids
    enc.close()
    enc = Repository.open(tmp_path / "e", "site b")
    assert assert_same_points(src, enc, tmp_path) == 6
    p = src.points()[0]
    ids_a = {c for _, c in src.load_map(p, 2000).iter_ids()}
    ids_e = {c for _, c in enc.load_map(p.id, 2000).iter_ids()}
    assert len(ids_a) == len(ids_e) and not ids_a & ids_e  # keyed ids: none the same
    assert verify(enc).ok
    back = new_repo(tmp_path / "c")
    r = copy_points(enc, back, EVERY)
    assert len(r.copied) == 6
    # the ids are the first repository's again (both unkeyed)
    assert back.load_map(p.id, 2000).entries == src.load_map(p.id, 2000).entries
    assert assert_same_points(src, back, tmp_path) == 6
    assert verify(back).ok


def test_a_later_copy_reads_only_new_chunks_between_different_keys(tmp_path: Path) -> None:
    src = new_repo(tmp_path / "a", passphrase="site a")
    fill(src, tmp_path, vms=("web",), points=3)
    dst = new_repo(tmp_path / "b", passphrase="site b")
    first = copy_points(src, dst, CopyFilter(older_than=1.5 * DAY))
    assert len(first.copied) == 2
    r = copy_points(src, dst, EVERY)
    assert len(r.copied) == 1 and len(r.present) == 2
    # the newest copied point's maps translate the unchanged chunks: only new ones are read
    assert r.stats.chunks_read == r.stats.chunks_sent
    assert 0 < r.stats.chunks_read < 10
    assert assert_same_points(src, dst, tmp_path) == 3


def test_encrypted_to_encrypted_with_other_keys(tmp_path: Path) -> None:
    src = new_repo(tmp_path / "a", packs=True, passphrase="one")
    fill(src, tmp_path, vms=("web",))
    dst = new_repo(tmp_path / "b", passphrase="two")
    r = copy_points(src, dst, EVERY)
    assert len(r.copied) == 3 and r.stats.blobs_as_stored == 0
    assert assert_same_points(src, dst, tmp_path) == 3 and verify(dst).ok


def test_the_copy_holds_a_running_marker_in_the_target_and_gc_keeps_its_chunks(
    tmp_path: Path,
) -> None:
    src = new_repo(tmp_path / "a")
    fill(src, tmp_path)
    dst = new_repo(tmp_path / "b")
    seen: list[list[str]] = []

    def between_points(_line: str) -> None:
        seen.append([m["job_id"] for m in dst.running_jobs()])
        gc(dst, grace=0)  # a gc of the target while the copy runs

    r = copy_points(src, dst, EVERY, note=between_points)
    assert len(r.copied) == 6 and all(s == [copy_job_id(src)] for s in seen)
    assert dst.running_jobs() == []
    assert assert_same_points(src, dst, tmp_path) == 6 and verify(dst).ok


def test_a_marker_left_by_a_killed_copy_is_replaced_and_removed(tmp_path: Path) -> None:
    src = new_repo(tmp_path / "a")
    fill(src, tmp_path, vms=("web",), points=1)
    dst = new_repo(tmp_path / "b")
    dst.begin_job(copy_job_id(src))  # as a SIGKILLed copy leaves it
    copy_points(src, dst, EVERY)
    assert dst.running_jobs() == []


def test_chunk_size_mismatch_and_the_same_repository_are_refused(tmp_path: Path) -> None:
    src = new_repo(tmp_path / "a")
    fill(src, tmp_path, vms=("web",), points=1)
    other = Repository.init(tmp_path / "b", chunk_size=2 * CS)
    with pytest.raises(InvalidRequestError, match=f"source .* has {CS}, target .* has {2 * CS}"):
        copy_points(src, other, EVERY)
    assert other.points() == [] and other.running_jobs() == []
    with pytest.raises(InvalidRequestError, match="are the same repository"):
        copy_points(src, Repository.open(tmp_path / "a"), EVERY)


def test_a_chunk_damaged_in_the_source_fails_its_points_only(tmp_path: Path) -> None:
    src = new_repo(tmp_path / "a")
    fill(src, tmp_path, vms=("web", "db"), points=1)
    web, db = sorted(src.points(), key=lambda p: p.vm_name != "web")
    db_ids = {c for _, c in src.load_map(db, 2000).iter_ids()}
    cid = next(c for _, c in src.load_map(web, 2000).iter_ids() if c not in db_ids)
    flip_bit(src.chunks.path_of(cid), 40)  # type: ignore[union-attr]  # a chunk-file repo
    dst = new_repo(tmp_path / "b")
    r = copy_points(src, dst, EVERY)
    assert [f.id for f in r.failed] == [web.id]
    assert cid.hex() in r.failed[0].reason and "source" in r.failed[0].reason
    assert [c.vm_name for c in r.copied] == ["db"]
    assert [p.vm_name for p in dst.points()] == ["db"]
    report = verify(dst)
    assert report.ok and not report.quarantined  # nothing damaged went into the target


def test_a_chunk_the_target_quarantined_is_sent_again(tmp_path: Path) -> None:
    """The target's copy of a chunk is damaged, the source's is intact. The copy trusts a
    chunk of the target by its name and size (as every backup does), so the damage is
    verify's to find; once verify has quarantined it, the next copy sends it again for
    every point naming it, those copied before included, and repair drops the record."""
    src = new_repo(tmp_path / "a")
    fill(src, tmp_path, vms=("web",))
    dst = new_repo(tmp_path / "b")
    copy_points(src, dst, EVERY)
    p = dst.points()[0]
    cid = next(c for _, c in dst.load_map(p, 2000).iter_ids())
    flip_bit(dst.chunks.path_of(cid), 40)  # type: ignore[union-attr]  # a chunk-file repo
    assert copy_points(src, dst, EVERY).stats.chunks_sent == 0  # not noticed: trusted
    report = verify(dst)
    assert report.quarantined == [cid.hex()]
    r = copy_points(src, dst, EVERY)
    assert r.stats.chunks_sent == r.stats.chunks_healed == 1 and not r.copied
    assert assert_same_points(src, dst, tmp_path) == 3
    assert repair(dst).healed == [cid.hex()]
    assert verify(dst).ok


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    src = new_repo(tmp_path / "a")
    fill(src, tmp_path, vms=("web",), points=2)
    dst = new_repo(tmp_path / "b")
    r = copy_points(src, dst, EVERY, dry_run=True)
    assert len(r.to_copy) == 2 and not r.copied and r.stats.chunks_read == 0
    assert dst.points() == [] and dst.running_jobs() == []


# --- the selection (pure) -------------------------------------------------------------


def point(
    vm: str, days_old: float, name: str = "", job: str = "nightly-20260101T000000Z-abcdef"
) -> Point:
    t = NOW - days_old * DAY
    return Point(
        id=f"20260101T000000Z-{abs(hash((vm, days_old))) % 16**8:08x}",
        job_id=job,
        vcenter="vc",
        vm_uuid=vm,
        vm_moref="vm-1",
        vm_name=name or f"name-{vm}",
        vm_config=b"",
        status="complete",
        snapshot_time=t,
        created=t,
        chunk_size=CS,
    )


POINTS = [point(vm, age) for vm in ("u1", "u2", "u3") for age in (0.5, 1.5, 3, 10)]


def ages(selected: list[Point]) -> list[tuple[str, float]]:
    return [(p.vm_uuid, round((NOW - p.snapshot_time) / DAY, 1)) for p in selected]


def test_filters_select_what_they_say() -> None:
    assert len(EVERY.select(POINTS, NOW)) == 12
    # by uuid and by name; oldest first per VM
    assert ages(CopyFilter(vms=("u2", "name-u3")).select(POINTS, NOW)) == [
        (vm, a) for vm in ("u2", "u3") for a in (10, 3, 1.5, 0.5)
    ]
    assert ages(CopyFilter(newer_than=2 * DAY).select(POINTS, NOW)) == [
        (vm, a) for vm in ("u1", "u2", "u3") for a in (1.5, 0.5)
    ]
    assert ages(CopyFilter(older_than=2 * DAY, vms=("u1",)).select(POINTS, NOW)) == [
        ("u1", 10),
        ("u1", 3),
    ]
    window = CopyFilter(newer_than=5 * DAY, older_than=1 * DAY, vms=("u1",))
    assert ages(window.select(POINTS, NOW)) == [("u1", 3), ("u1", 1.5)]
    # --latest applies after the others: the newest N of what they left
    assert ages(CopyFilter(latest=1, older_than=2 * DAY).select(POINTS, NOW)) == [
        ("u1", 3),
        ("u2", 3),
        ("u3", 3),
    ]
    assert CopyFilter(vms=("nope", "u1")).unmatched_vms(POINTS) == ["nope"]
    weekly = [point("u9", 1, job="weekly-20260101T000000Z-abcdef")]
    assert ages(CopyFilter(policy="weekly").select(POINTS + weekly, NOW)) == [("u9", 1)]
    assert len(CopyFilter(policy="nightly").select(POINTS + weekly, NOW)) == 12


def test_plan_skips_points_the_target_has() -> None:
    have = {POINTS[0].id, POINTS[5].id}
    plan = plan_copy(POINTS, have, EVERY, NOW)
    assert {p.id for p in plan.present} == have
    assert {p.id for p in plan.to_copy} == {p.id for p in POINTS} - have


def test_bad_filters_are_refused() -> None:
    with pytest.raises(InvalidRequestError, match="--latest 0"):
        CopyFilter(latest=0)
    with pytest.raises(InvalidRequestError, match="--older-than must be less than --newer-than"):
        CopyFilter(newer_than=DAY, older_than=2 * DAY)
    with pytest.raises(InvalidRequestError, match="not an age: '3 fortnights'"):
        parse_age("3 fortnights")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("90s", 90),
        ("15m", 900),
        ("36h", 129600),
        ("7d", 604800),
        ("2w", 1209600),
        ("1.5d", 129600),
    ],
)
def test_ages(text: str, seconds: float) -> None:
    assert parse_age(text) == seconds


def test_a_damaged_chunk_leaves_the_rest_of_its_batch_to_the_next_point(tmp_path: Path) -> None:
    """The chunks read before the damaged one in the same batch were never written: the
    next point naming them sends them (it does not take them as present)."""
    src = new_repo(tmp_path / "a")
    fill(src, tmp_path, vms=("web",), points=2)
    first, second = src.points()
    kept = {c for _, c in src.load_map(second, 2000).iter_ids()}
    index, cid = next((i, c) for i, c in src.load_map(first, 2000).iter_ids() if c not in kept)
    assert index > 0  # chunks before it in the batch, named by the second point too
    flip_bit(src.chunks.path_of(cid), 40)  # type: ignore[union-attr]  # a chunk-file repo
    dst = new_repo(tmp_path / "b")
    r = copy_points(src, dst, EVERY)
    assert [f.id for f in r.failed] == [first.id] and [c.id for c in r.copied] == [second.id]
    assert assert_same_points(src, dst, tmp_path) == 1
