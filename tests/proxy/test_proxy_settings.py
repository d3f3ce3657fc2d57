"""ProxySettings keeps http requests in flight within the memory budget: a combination that
could stall a task is refused, naming the settings; extra requests in flight are lowered
to what fits."""

from __future__ import annotations

import pytest

from proxy_worker.settings import HttpSettings, ProxySettings

MiB = 1 << 20


def _held(s: ProxySettings) -> int:
    h = s.http_settings()
    return s.tasks_in_parallel * h.requests_in_flight * h.request_bytes


def test_defaults_keep_both_requests_in_flight() -> None:
    s = ProxySettings()
    assert s.http_settings().requests_in_flight == s.http.requests_in_flight == 2
    assert _held(s) <= s.memory_limit_mib * MiB // 2


def test_requests_in_flight_are_lowered_to_what_half_the_budget_holds() -> None:
    """Requests being read hold budget the reader cannot hand on yet; with the windows
    being filled they must never hold all of it, or the task would wait for itself."""
    s = ProxySettings(tasks_in_parallel=4)  # 4 x 2 x 8 MiB would be 64 of 96 MiB
    assert s.http_settings().requests_in_flight == 1
    assert _held(s) <= s.memory_limit_mib * MiB // 2
    s = ProxySettings(tasks_in_parallel=2, http=HttpSettings(requests_in_flight=4))
    assert s.http_settings().requests_in_flight == 3  # 2 x 3 x 8 = 48 of 96
    assert s.http_settings().request_bytes == s.http.request_bytes


def test_one_request_per_task_beyond_half_the_budget_is_refused() -> None:
    with pytest.raises(ValueError) as exc:
        ProxySettings(memory_limit_mib=16, tasks_in_parallel=2)
    msg = str(exc.value)
    assert "proxy.http.request_bytes (16 MiB)" in msg and "(16 MiB)" in msg
    ProxySettings(memory_limit_mib=16, tasks_in_parallel=2, http=HttpSettings(request_bytes=MiB))


@pytest.mark.parametrize("in_flight", [0, 5])
def test_http_requests_in_flight_within_one_and_the_pool(in_flight: int) -> None:
    with pytest.raises(ValueError, match=r"requests_in_flight: must be within 1\.\.pool_size"):
        HttpSettings(requests_in_flight=in_flight, pool_size=4)
