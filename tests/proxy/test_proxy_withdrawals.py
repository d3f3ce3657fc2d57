"""The proxy's memory of withdrawn tasks (proxy_worker/withdrawals.py): bounded, expiring,
and a task that runs when (or after) its withdrawal arrives is stopped exactly once."""

from __future__ import annotations

import threading
import time

from common.messages import TaskWithdrawal
from proxy_worker.withdrawals import Withdrawals


def _w(*ids: str, reason: str = "cancelled") -> TaskWithdrawal:
    return TaskWithdrawal("job1", list(ids), reason)


def test_reason_of_withdrawn_tasks_only() -> None:
    w = Withdrawals()
    w.add(_w("a", "b"))
    w.add(_w("c", reason="timeout"))
    assert (w.reason("a"), w.reason("c"), w.reason("x")) == ("cancelled", "timeout", None)


def test_memory_is_bounded_oldest_first() -> None:
    w = Withdrawals(keep=3)
    w.add(_w("a", "b", "c"))
    w.add(_w("d"))
    assert w.reason("a") is None
    assert [w.reason(t) for t in "bcd"] == ["cancelled"] * 3


def test_entries_expire() -> None:
    w = Withdrawals(ttl_s=0.001)
    w.add(_w("old"))
    time.sleep(0.01)
    w.add(_w("new"))  # the sweep on each add drops what is past the ttl
    assert w.reason("new") == "cancelled"
    assert w.reason("old") is None


def test_running_task_is_cancelled_by_a_later_withdrawal() -> None:
    w = Withdrawals()
    got: list[str] = []
    with w.running("t1", got.append):
        w.add(_w("other"))
        assert got == []
        w.add(_w("t1", reason="cancelled"))
        assert got == ["cancelled"]
    w.add(_w("t1"))  # finished: nothing to stop any more
    assert got == ["cancelled"]


def test_withdrawal_that_came_first_cancels_at_once() -> None:
    """No gap between the check before the task and the registration while it runs."""
    w = Withdrawals()
    w.add(_w("t1", reason="timeout"))
    got: list[str] = []
    with w.running("t1", got.append):
        pass
    assert got == ["timeout"]


def test_concurrent_withdrawals_and_runs() -> None:
    w = Withdrawals()
    hits: list[str] = []
    lock = threading.Lock()

    def cancel(reason: str) -> None:
        with lock:
            hits.append(reason)

    def run(i: int) -> None:
        with w.running(f"t{i}", cancel):
            w.add(_w(f"t{i}"))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(hits) == 50
