"""Heap settings of proxies and writers: chunk-sized buffers are reused, freed memory goes back.

Each case runs in a fresh interpreter, since mallopt settings last for the process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

PROBE = textwrap.dedent(
    """
    import json, resource, sys
    from common.malloc_tuning import limit_heap_retention
    from bench.procmem import proc_memory

    MiB = 1 << 20
    applied = limit_heap_retention(**json.loads(sys.argv[1]))

    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    # The pipeline's pattern: a 1 MiB read, a compressed copy, a 4 MiB batch, all freed.
    for _ in range(8):  # warm up: the heap grows once
        a = b"x" * MiB; b = b"y" * (MiB // 2); c = b"z" * (4 * MiB); del a, b, c
    f0 = faults()
    for _ in range(200):
        a = b"x" * MiB; b = b"y" * (MiB // 2); c = b"z" * (4 * MiB); del a, b, c
    churn_faults = faults() - f0

    rss0 = proc_memory()["VmRSS"]
    held = [b"x" * MiB for _ in range(128)]
    rss_held = proc_memory()["VmRSS"]
    del held
    rss_freed = proc_memory()["VmRSS"]
    print(json.dumps({"applied": applied, "churn_faults": churn_faults,
                      "held": (rss_held - rss0) / MiB, "kept": (rss_freed - rss0) / MiB}))
    """
)


def probe(**settings: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(settings)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout)
    return result


def test_chunk_buffers_are_reused_not_faulted_in_again() -> None:
    r = probe()
    assert r["applied"]
    # 200 rounds of 5.5 MiB = 281,600 pages if each buffer were a new mapping
    assert r["churn_faults"] < 2_000, r


def test_a_small_mmap_threshold_faults_every_buffer_in() -> None:
    """The measurement above can see the difference (the old setting, 256 KiB)."""
    r = probe(mmap_threshold=256 << 10, arenas=2, trim_threshold=512 << 10)
    assert r["churn_faults"] > 200 * 5 * 256, r


def test_freed_buffers_go_back_to_the_kernel() -> None:
    r = probe()
    assert r["held"] >= 120, r
    assert r["kept"] <= 34, r  # the heap's top is trimmed down to the trim threshold


def test_thresholds_glibc_refuses_are_clamped() -> None:
    assert probe(mmap_threshold=1 << 30)["applied"]
