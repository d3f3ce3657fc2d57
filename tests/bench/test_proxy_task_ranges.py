"""The proxy bench's task ranges: what the coordinator would plan for a full backup."""

from __future__ import annotations

from pathlib import Path

from bench.proxy_throughput import CHUNK, chunks_of, full_backup_ranges


def test_full_backup_ranges_are_the_allocated_areas_grown_to_whole_chunks(
    tmp_path: Path,
) -> None:
    disk = tmp_path / "disk-flat.vmdk"
    capacity = 8 * CHUNK + 512  # a short last chunk
    with open(disk, "wb") as f:
        f.truncate(capacity)
        f.seek(CHUNK + 4096)  # inside chunk 1
        f.write(b"a" * 100)
        f.seek(2 * CHUNK)  # chunk 2: joins chunk 1's range
        f.write(b"b" * CHUNK)
        f.seek(5 * CHUNK)
        f.write(b"c" * 10)
        f.seek(8 * CHUNK)  # the tail
        f.write(b"d" * 512)
    ranges = full_backup_ranges(disk, capacity)
    assert ranges == [(CHUNK, 2 * CHUNK), (5 * CHUNK, CHUNK), (8 * CHUNK, 512)]
    assert chunks_of(ranges) == [
        (CHUNK, CHUNK),
        (2 * CHUNK, CHUNK),
        (5 * CHUNK, CHUNK),
        (8 * CHUNK, 512),
    ]


def test_a_disk_of_holes_gives_no_task_range(tmp_path: Path) -> None:
    disk = tmp_path / "empty-flat.vmdk"
    with open(disk, "wb") as f:
        f.truncate(4 * CHUNK)
    assert full_backup_ranges(disk, 4 * CHUNK) == []
