"""ProxySettings refuses combinations that could stall a task, naming the settings."""

from __future__ import annotations

import pytest

from proxy_worker.settings import HttpSettings, ProxySettings

MiB = 1 << 20


def test_defaults_leave_http_requests_within_the_budget() -> None:
    s = ProxySettings()
    held = s.tasks_in_parallel * s.http.requests_in_flight * s.http.request_bytes
    assert held <= s.memory_limit_mib * MiB // 2


def test_http_requests_in_flight_beyond_half_the_budget_are_refused() -> None:
    """Requests being read hold budget the reader cannot hand on; with the windows being
    filled they could hold all of it, and the task would wait for itself."""
    http = HttpSettings(request_bytes=8 * MiB, requests_in_flight=2)
    with pytest.raises(ValueError) as exc:
        ProxySettings(memory_limit_mib=48, tasks_in_parallel=2, http=http)
    msg = str(exc.value)
    assert "proxy.http.requests_in_flight" in msg and "(32 MiB)" in msg and "48 MiB" in msg
    ProxySettings(memory_limit_mib=64, tasks_in_parallel=2, http=http)  # 32 of 64: fine
    ProxySettings(
        memory_limit_mib=16, tasks_in_parallel=1, http=HttpSettings(request_bytes=4 * MiB)
    )


@pytest.mark.parametrize("in_flight", [0, 5])
def test_http_requests_in_flight_within_one_and_the_pool(in_flight: int) -> None:
    with pytest.raises(ValueError, match=r"requests_in_flight must be within 1\.\.pool_size"):
        HttpSettings(requests_in_flight=in_flight, pool_size=4)
