"""ReadBuffers: a buffer is lent again only once nothing refers to it."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from proxy_worker.transports.read_buffers import ReadBuffers

KiB = 1 << 10


def test_a_dropped_buffer_is_lent_again() -> None:
    pool = ReadBuffers(limit=64 * KiB)
    first = pool.take(4 * KiB)
    first_id = id(first)
    del first
    again = pool.take(4 * KiB)
    assert id(again) == first_id
    assert pool.kept == 4 * KiB


def test_a_buffer_anyone_still_holds_is_never_lent_again() -> None:
    pool = ReadBuffers(limit=1 << 20)
    held_directly = pool.take(4 * KiB)
    in_a_list = [pool.take(4 * KiB)]
    a_slice = memoryview(pool.take(4 * KiB))[100:200]  # only a view of it is left
    in_a_tuple = (b"id", 4 * KiB, False, pool.take(4 * KiB))  # as a chunk batch holds it
    with ThreadPoolExecutor(1) as ex:
        gate = threading.Event()
        busy = ex.submit(lambda buf: gate.wait(10) and len(buf), pool.take(4 * KiB))
        lent = [held_directly, in_a_list[0], a_slice.obj, in_a_tuple[3]]
        fresh = [pool.take(4 * KiB) for _ in range(5)]
        assert all(f is not x for f in fresh for x in lent)
        assert len({id(f) for f in fresh}) == 5
        gate.set()
        assert busy.result() == 4 * KiB
    assert pool.kept == 10 * 4 * KiB


def test_nothing_beyond_the_limit_is_kept() -> None:
    pool = ReadBuffers(limit=3 * 4 * KiB)
    held = [pool.take(4 * KiB) for _ in range(5)]
    assert all(len(b) == 4 * KiB for b in held)
    assert pool.kept == 3 * 4 * KiB
    del held
    assert pool.kept == 3 * 4 * KiB  # the two over the limit were ordinary buffers
    ids = {id(pool.take(4 * KiB)) for _ in range(4)}
    assert len(ids) <= 3


def test_sizes_that_are_not_chunk_sizes_are_not_pooled() -> None:
    pool = ReadBuffers(limit=1 << 20)
    tail = pool.take(5000)  # a disk's short last chunk
    assert len(tail) == 5000
    assert pool.kept == 0
    assert pool.take(0) == bytearray()


def test_threads_never_share_a_buffer() -> None:
    """Each thread fills what it took with its own pattern, keeps it a while, checks it."""
    pool = ReadBuffers(limit=16 * 4 * KiB)
    errors: list[str] = []

    def work(tag: int) -> None:
        held: list[tuple[bytearray, bytes]] = []
        for n in range(400):
            buf = pool.take(4 * KiB)
            pattern = bytes([(tag * 31 + n) % 256]) * (4 * KiB)
            buf[:] = pattern
            held.append((buf, pattern))
            if len(held) > 3:
                old, want = held.pop(0)
                if old != want:
                    errors.append(f"thread {tag}: a buffer it held was overwritten")
            del buf

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert pool.kept <= 16 * 4 * KiB
