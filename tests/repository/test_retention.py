"""Retention decisions (repository/retention.py): properties with hypothesis, and the
reasons an operator reads."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.job_ids import new_job_id, policy_of_job
from repository.errors import InvalidRequestError
from repository.points import Point, PointDisk
from repository.retention import CLOCK_SKEW, KeepPolicy, RunningJob, decide

NOW = datetime(2026, 12, 31, 12, tzinfo=UTC).timestamp()
DAY = 86400.0
POLICIES = ["gold", "silver", "gold-db"]  # "gold-db" is not "gold"


def _job(policy: str, n: int) -> str:
    return new_job_id(policy, datetime.fromtimestamp(NOW - n * DAY, UTC))


def point(
    pid: str,
    job_id: str,
    vm: str,
    t: float,
    disks: tuple[int, ...] = (2000,),
    status: str = "complete",
    created: float | None = None,
) -> Point:
    return Point(
        id=pid,
        job_id=job_id,
        vcenter="vc",
        vm_uuid=f"u-{vm}",
        vm_moref=f"vm-{vm}",
        vm_name=vm,
        vm_config=b"",
        status=status,
        snapshot_time=t,
        created=t + 60 if created is None else created,
        chunk_size=1 << 20,
        disks=[PointDisk(k, 1 << 20, "", "", {}, 1, 0, 1) for k in disks],
    )


@st.composite
def repositories(draw: st.DrawFn) -> list[Point]:
    """Points of a few VMs and policies over two years, some partial (a disk missing),
    some of jobs that are no policy's (`repo import-disk`)."""
    n = draw(st.integers(0, 40))
    out = []
    for i in range(n):
        vm = draw(st.sampled_from(["a", "b", "c"]))
        job = draw(
            st.one_of(
                st.builds(_job, st.sampled_from(POLICIES), st.integers(0, 700)),
                st.just(f"import-{i}"),
            )
        )
        t = NOW - draw(st.floats(0, 730 * DAY, allow_nan=False))
        disks = draw(st.sampled_from([(2000,), (2000, 2001), (2001,), ()]))
        out.append(point(f"p{i:03d}", job, vm, t, disks, "complete" if len(disks) else "partial"))
    return out


# every rule alone and mixed (KeepPolicy refuses no rule at all)
keeps = st.one_of(
    st.builds(KeepPolicy, last=st.integers(1, 5)),
    st.builds(KeepPolicy, daily=st.integers(1, 7), weekly=st.integers(0, 5)),
    st.builds(
        KeepPolicy,
        last=st.integers(0, 3),
        hourly=st.integers(0, 3),
        daily=st.integers(0, 7),
        weekly=st.integers(0, 5),
        monthly=st.integers(1, 12),
        yearly=st.integers(0, 3),
    ),
)


def _series(points: list[Point]) -> dict[tuple[str, int | None], list[Point]]:
    out: dict[tuple[str, int | None], list[Point]] = defaultdict(list)
    for p in points:
        for k in [d.key for d in p.disks] or [None]:
            out[(p.vm_uuid, k)].append(p)
    return {
        k: sorted(v, key=lambda p: (p.snapshot_time, p.id), reverse=True) for k, v in out.items()
    }


@given(repositories(), keeps, st.sampled_from([*POLICIES, None]))
@settings(max_examples=150)
def test_one_decision_per_point_of_the_policy_and_none_for_others(
    points: list[Point], keep: KeepPolicy, policy: str | None
) -> None:
    decisions = decide(points, keep, NOW, policy=policy)
    decided = [d.point.id for d in decisions]
    assert len(decided) == len(set(decided))
    mine = {p.id for p in points if policy is None or policy_of_job(p.job_id) == policy}
    assert set(decided) == mine
    for d in decisions:
        assert d.reasons  # every decision says why


@given(repositories(), repositories(), keeps, st.sampled_from(POLICIES))
@settings(max_examples=100)
def test_other_policies_points_change_nothing(
    points: list[Point], others: list[Point], keep: KeepPolicy, policy: str
) -> None:
    """Adding any number of points of other policies (and of no policy) to the repository
    leaves every decision about this policy's points as it was."""
    mine = [p for p in points if policy_of_job(p.job_id) == policy]
    foreign = [p for p in others if policy_of_job(p.job_id) != policy]
    foreign = [Point(**{**p.__dict__, "id": "x" + p.id}) for p in foreign]  # distinct ids
    alone = decide(mine, keep, NOW, policy=policy)
    mixed = decide(mine + foreign, keep, NOW, policy=policy)
    assert alone == mixed


@given(repositories(), st.integers(1, 6))
@settings(max_examples=150)
def test_keep_last_keeps_the_n_newest_of_every_disk(points: list[Point], n: int) -> None:
    kept = {d.point.id for d in decide(points, KeepPolicy(last=n), NOW) if d.keep}
    for series in _series(points).values():
        assert {p.id for p in series[:n]} <= kept
    # and nothing else (no running job here): a point is kept only as one of those
    newest = {p.id for s in _series(points).values() for p in s[:n]}
    assert kept == newest


@given(repositories(), keeps)
@settings(max_examples=150)
def test_the_newest_point_of_every_disk_is_kept(points: list[Point], keep: KeepPolicy) -> None:
    """Whatever the rules, the next incremental of each disk finds its base."""
    kept = {d.point.id for d in decide(points, keep, NOW) if d.keep}
    for series in _series(points).values():
        assert series[0].id in kept


@given(repositories(), st.integers(1, 10))
@settings(max_examples=100)
def test_daily_keeps_the_newest_of_each_of_the_n_newest_days(points: list[Point], n: int) -> None:
    kept = {d.point.id for d in decide(points, KeepPolicy(daily=n), NOW) if d.keep}
    want = set()
    for series in _series(points).values():
        by_day: dict[str, Point] = {}
        for p in series:  # newest first: the first of each day is its newest
            by_day.setdefault(datetime.fromtimestamp(p.snapshot_time, UTC).date().isoformat(), p)
        for day in sorted(by_day, reverse=True)[:n]:
            want.add(by_day[day].id)
    assert kept == want


@given(repositories(), keeps, st.sampled_from([*POLICIES, None]))
@settings(max_examples=100)
def test_pruning_again_removes_nothing(
    points: list[Point], keep: KeepPolicy, policy: str | None
) -> None:
    kept_ids = {d.point.id for d in decide(points, keep, NOW, policy=policy) if d.keep}
    left = [p for p in points if p.id in kept_ids or (policy and policy_of_job(p.job_id) != policy)]
    assert all(d.keep for d in decide(left, keep, NOW, policy=policy))


@given(repositories(), keeps, st.data())
@settings(max_examples=100)
def test_points_of_a_running_job_and_what_it_may_base_on_stay(
    points: list[Point], keep: KeepPolicy, data: st.DataObject
) -> None:
    jobs = sorted({p.job_id for p in points}) or ["none-20260101T000000Z-000000"]
    job = data.draw(st.sampled_from(jobs))
    started = NOW - data.draw(st.floats(0, 730 * DAY))
    decisions = decide(points, keep, NOW, running=[RunningJob(job, started)])
    by_id = {d.point.id: d for d in decisions}
    for p in points:
        if p.job_id == job:
            assert by_id[p.id].keep and f"running job {job}" in by_id[p.id].reasons
    since = started - CLOCK_SKEW
    for series in _series(points).values():
        existed = [p for p in series if p.created < since]
        if existed:  # the base the job may have planned on, over every policy's points
            assert by_id[existed[0].id].keep
        for p in series:
            if p.created >= since:  # committed while it ran: it may base on these too
                assert by_id[p.id].keep


# --- examples: the reasons ------------------------------------------------------------


def _t(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC).timestamp()


def test_reasons_name_the_rule_and_its_period() -> None:
    job = "gold-20261201T220000Z-aaaaaa"
    pts = [
        point("p1", job, "web", _t("2026-12-01 22:00")),
        point("p2", job, "web", _t("2026-12-01 02:00")),
        point("p3", job, "web", _t("2026-11-30 22:00")),
        point("p4", job, "web", _t("2026-11-02 22:00")),
        point("p5", job, "web", _t("2026-10-02 22:00")),
    ]
    got = {d.point.id: d.text() for d in decide(pts, KeepPolicy(daily=2, monthly=2), NOW)}
    assert got["p1"] == "keep (daily 2026-12-01; monthly 2026-12)"
    assert got["p2"] == (
        "remove (daily 2026-12-01 is kept by a newer point;"
        " monthly 2026-12 is kept by a newer point; 30 days old)"
    )
    assert got["p3"] == "keep (daily 2026-11-30; monthly 2026-11)"
    assert got["p4"].startswith(
        "remove (daily 2026-11-02 is past the 2 newest days; monthly 2026-11 is kept by a newer"
    )
    assert (
        got["p5"].startswith("remove (")
        and "monthly 2026-10 is past the 2 newest months" in (got["p5"])
    )
    last = {d.point.id: d.text() for d in decide(pts, KeepPolicy(last=1, weekly=1), NOW)}
    assert last["p1"] == "keep (last #1; weekly 2026-W49)"
    assert last["p3"] == (
        "remove (not among the last 1; weekly 2026-W49 is kept by a newer point; 30 days old)"
    )
    assert last["p4"] == (
        "remove (not among the last 1; weekly 2026-W45 is past the newest week; 58 days old)"
    )


def test_a_partial_point_never_pushes_out_the_last_point_of_the_disk_it_lacks() -> None:
    """The newest point is partial (disk 2001 failed): keep-last 1 keeps it for disk 2000
    and the older complete point for disk 2001, and says which disk each is kept for."""
    job = "gold-20261201T220000Z-aaaaaa"
    old = point("old", job, "db", _t("2026-11-30 22:00"), (2000, 2001))
    new = point("new", job, "db", _t("2026-12-01 22:00"), (2000,), status="partial")
    got = {d.point.id: d.text() for d in decide([old, new], KeepPolicy(last=1), NOW)}
    assert got == {"new": "keep (last #1)", "old": "keep (last #1 (disk 2001))"}


def test_running_reasons() -> None:
    a = point("a", "gold-20261201T220000Z-aaaaaa", "web", _t("2026-12-01 22:00"))
    b = point("b", "gold-20261202T220000Z-bbbbbb", "web", _t("2026-12-02 22:00"))
    c = point("c", "gold-20261203T220000Z-cccccc", "web", _t("2026-12-03 22:00"))
    running = [RunningJob(c.job_id, c.created - 3600)]
    got = {d.point.id: d for d in decide([a, b, c], KeepPolicy(last=1), NOW, running=running)}
    assert got["c"].reasons == ("running job gold-20261203T220000Z-cccccc", "last #1")
    # b was the newest when c's job started: c's job may have planned on it
    assert got["b"].text() == "keep (running job gold-20261203T220000Z-cccccc may base on it)"
    assert not got["a"].keep


def test_keep_policy_refuses_nothing_and_negative() -> None:
    with pytest.raises(InvalidRequestError, match="no keep rule"):
        KeepPolicy()
    with pytest.raises(InvalidRequestError, match="negative"):
        KeepPolicy(last=-1)
    assert KeepPolicy(last=3, monthly=12).describe() == "last 3, monthly 12"


def test_policy_of_job_is_exact() -> None:
    assert policy_of_job(new_job_id("gold-db")) == "gold-db"
    assert policy_of_job("gold-20261201T220000Z-aaaaaa") == "gold"
    for foreign in ("import-1234", "job-good", "gold-2026-aaaaaa", "", "-20261201T220000Z-aaaaaa"):
        assert policy_of_job(foreign) == ""
