"""The storage contract (repository/storage.py), run against every implementation.

Each implementation is one ``Backend`` in BACKENDS: how to make an empty storage, how
long its clock needs to move visibly, and how to make one on a full device: the local
directory, and S3 on the lab's real Ceph RGW (a bucket each; "full" is a bucket quota;
S3-only tests are in tests/repository/test_s3_storage.py). Tests
that look at the local files themselves (temps, fsyncs, a killed writer) come after the
contract, then the name checker's properties (Hypothesis).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import overload

import blake3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.packed_entries import pack_entries
from repository import fsutil
from repository.errors import (
    InvalidObjectNameError,
    MissingObjectError,
    RepositoryError,
    RepositoryFullError,
)
from repository.gc import gc
from repository.local_storage import LocalDirectoryStorage
from repository.repository import Repository
from repository.s3_storage import S3Storage
from repository.staging import job_dir_name, request_dir_name
from repository.storage import MAX_NAME, Bytes, Storage, check_name, valid_part
from tests.rgw import Rgw
from tests.small_fs import MiB, small_filesystem

ROOT = Path(__file__).resolve().parent.parent.parent


@contextlib.contextmanager
def _local_full(tmp: Path, request: pytest.FixtureRequest) -> Iterator[Storage]:
    with small_filesystem(tmp / "small", 8 * MiB) as mnt:
        yield LocalDirectoryStorage(mnt)


def _local(tmp: Path, request: pytest.FixtureRequest) -> Storage:
    root = tmp / "store"
    root.mkdir()
    return LocalDirectoryStorage(root)


def _s3(tmp: Path, request: pytest.FixtureRequest) -> Storage:
    s: Storage = request.getfixturevalue("s3_storage")  # a fresh bucket on the real RGW
    return s


@contextlib.contextmanager
def _s3_full(tmp: Path, request: pytest.FixtureRequest) -> Iterator[Storage]:
    """A bucket with an 8 MiB quota: RGW refuses what would go over (QuotaExceeded)."""
    rgw: Rgw = request.getfixturevalue("rgw")
    s: S3Storage = request.getfixturevalue("s3_storage")
    rgw.set_bucket_quota(s.loc.bucket, 8 * MiB)
    yield s


@dataclass(frozen=True)
class Backend:
    name: str
    # an empty storage (given a private temp directory and the test's fixtures)
    make: Callable[[Path, pytest.FixtureRequest], Storage]
    clock_step: float  # a wait after which the storage's mtimes are visibly later
    # one on an 8 MiB device (S3: a bucket with an 8 MiB quota)
    full: Callable[[Path, pytest.FixtureRequest], AbstractContextManager[Storage]]


BACKENDS = [
    pytest.param(Backend("local", _local, 0.05, _local_full), id="local"),
    # S3's mtimes are Last-Modified's whole seconds
    pytest.param(Backend("s3", _s3, 1.1, _s3_full), id="s3", marks=pytest.mark.integration),
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    b: Backend = request.param
    return b


@pytest.fixture
def storage(backend: Backend, tmp_path: Path, request: pytest.FixtureRequest) -> Storage:
    return backend.make(tmp_path, request)


class Exploding(Sequence[bytes]):
    """Parts whose ``n``-th one fails: the caller's data running out mid-write (a crash
    of whatever produced it)."""

    def __init__(self, good: list[bytes], n: int) -> None:
        self.good = good
        self.n = n

    def __len__(self) -> int:
        return len(self.good) + 1

    @overload
    def __getitem__(self, i: int) -> bytes: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[bytes]: ...
    def __getitem__(self, i: int | slice) -> bytes | Sequence[bytes]:
        if isinstance(i, slice):
            raise TypeError("no slices")
        if i == self.n:
            raise RuntimeError("the data source died")
        if i >= len(self):
            raise IndexError(i)
        return self.good[i if i < self.n else i - 1]


def names(storage: Storage, prefix: str = "") -> list[str]:
    return [o.name for o in storage.list(prefix)]


# --- the contract ---------------------------------------------------------------------


def test_write_then_read_whole(storage: Storage) -> None:
    parts: list[Bytes] = [b"VBTASK01", bytearray(b"\x00" * 1000), memoryview(b"tag" * 11), b""]
    t0 = time.time()
    storage.write("staging/0123/disk-2000.task-ab", parts)
    want = b"".join(bytes(p) for p in parts)
    assert storage.read("staging/0123/disk-2000.task-ab") == want
    assert storage.exists("staging/0123/disk-2000.task-ab")
    size, mtime = storage.stat("staging/0123/disk-2000.task-ab")
    assert size == len(want)
    assert abs(mtime - t0) < 60  # the storage's clock, near ours
    (info,) = storage.list("staging")
    assert info == ("staging/0123/disk-2000.task-ab", len(want), mtime)


def test_empty_object(storage: Storage) -> None:
    storage.write("running/empty", [])
    assert storage.read("running/empty") == b""
    assert storage.stat("running/empty").size == 0
    assert names(storage) == ["running/empty"]


def test_write_replaces_whole(storage: Storage) -> None:
    storage.write("config", [b"x" * 100_000])
    storage.write("config", [b"short"])
    assert storage.read("config") == b"short"  # nothing of the longer one is left
    assert storage.stat("config").size == 5
    assert names(storage) == ["config"]


def test_missing_object(storage: Storage) -> None:
    with pytest.raises(MissingObjectError, match="running/nope") as err:
        storage.read("running/nope")
    assert err.value.name == "running/nope"
    assert err.value.location == storage.location("running/nope")
    with pytest.raises(MissingObjectError, match="running/nope"):
        storage.stat("running/nope")
    assert not storage.exists("running/nope")
    assert storage.touch("running/nope") is False
    assert names(storage, "running") == [] and names(storage) == []


def test_failed_write_leaves_no_object(storage: Storage) -> None:
    with pytest.raises(RuntimeError, match="the data source died"):
        storage.write("staging/ab/new", Exploding([b"first part " * 1000], 1))
    assert not storage.exists("staging/ab/new")
    assert names(storage) == []  # nothing unfinished shows
    with pytest.raises(MissingObjectError):
        storage.read("staging/ab/new")


def test_failed_write_keeps_the_old_object(storage: Storage) -> None:
    storage.write("quarantine/abc/rec.json", [b"old record"])
    for n in (0, 1, 3):
        with pytest.raises(RuntimeError):
            storage.write("quarantine/abc/rec.json", Exploding([b"new " * 5000] * 3, n))
        assert storage.read("quarantine/abc/rec.json") == b"old record"
    assert names(storage) == ["quarantine/abc/rec.json"]


def test_list_by_prefix(storage: Storage) -> None:
    objs = ["a/b/x", "a/b/y/z", "a/bc", "ab", "b/c", "staging/1/p", "staging/2/q"]
    for i, n in enumerate(objs):
        storage.write(n, [bytes(i)])
    assert names(storage, "a/b") == ["a/b/x", "a/b/y/z"]  # not a/bc: under "a/b/" only
    assert names(storage, "a") == ["a/b/x", "a/b/y/z", "a/bc"]  # not ab
    assert names(storage, "staging") == ["staging/1/p", "staging/2/q"]
    assert names(storage, "ab") == []  # an object, nothing under it
    assert names(storage, "nothing/here") == []
    assert names(storage) == sorted(objs)
    sizes = {o.name: o.size for o in storage.list("")}
    assert sizes == {n: i for i, n in enumerate(objs)}


def test_list_is_in_name_order(storage: Storage) -> None:
    # characters that sort before "/" ("+", ",", "-", ".") next to a "directory"
    objs = ["q/a-b", "q/a/b", "q/a.c", "q/a+d/x", "q/a0", "q/a,e", "q/A", "q/_"]
    for n in objs:
        storage.write(n, [b"."])
    assert names(storage, "q") == sorted(objs)


def test_delete_is_idempotent(storage: Storage) -> None:
    storage.write("running/m1", [b"{}"])
    storage.write("running/m2", [b"{}"])
    storage.delete("running/m1")
    assert not storage.exists("running/m1")
    storage.delete("running/m1")  # again: fine
    storage.delete("running/never-written")
    storage.delete("not/even/a/prefix")
    assert names(storage) == ["running/m2"]


def test_delete_all_removes_one_group(storage: Storage) -> None:
    for n in ("staging/aa/p-0", "staging/aa/p-1", "staging/aab/p-0", "staging/bb/t"):
        storage.write(n, [b"entries"])
    storage.delete_all("staging/aa")
    assert names(storage) == ["staging/aab/p-0", "staging/bb/t"]
    storage.delete_all("staging/aa")  # again: fine
    storage.delete_all("staging/none")
    with pytest.raises(InvalidObjectNameError):
        storage.delete_all("")  # never everything
    assert names(storage) == ["staging/aab/p-0", "staging/bb/t"]


def test_create_only_if_absent(storage: Storage) -> None:
    assert storage.create("points/vm-1/p1/meta", [b"first ", b"commit"]) is True
    assert storage.read("points/vm-1/p1/meta") == b"first commit"
    assert storage.create("points/vm-1/p1/meta", [b"second"]) is False
    assert storage.read("points/vm-1/p1/meta") == b"first commit"  # untouched
    storage.write("points/vm-1/p1/meta", [b"replaced"])  # write still replaces
    assert storage.create("points/vm-1/p1/meta", [b"third"]) is False
    storage.delete("points/vm-1/p1/meta")
    assert storage.create("points/vm-1/p1/meta", []) is True
    assert storage.read("points/vm-1/p1/meta") == b""
    assert names(storage) == ["points/vm-1/p1/meta"]


def test_failed_create_leaves_nothing(storage: Storage) -> None:
    with pytest.raises(RuntimeError, match="the data source died"):
        storage.create("points/vm-1/p2/meta", Exploding([b"x" * 1000], 1))
    assert names(storage) == [] and not storage.exists("points/vm-1/p2/meta")
    assert storage.create("points/vm-1/p2/meta", [b"now"]) is True


def _race_to_create(storage: Storage, name: str, n: int) -> list[int]:
    """``n`` threads create ``name`` at once; which of them were told they made it."""
    won: list[int] = []
    barrier = threading.Barrier(n)

    def create(i: int) -> None:
        barrier.wait()
        if storage.create(name, [f"creator {i} ".encode() * 100]):
            won.append(i)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won


def test_concurrent_creates_have_one_winner(storage: Storage) -> None:
    for round_ in range(3):
        name = f"commits/c{round_}"
        won = _race_to_create(storage, name, 6)
        assert len(won) == 1
        assert storage.read(name) == f"creator {won[0]} ".encode() * 100


def test_touch_moves_mtime_and_keeps_bytes(storage: Storage, backend: Backend) -> None:
    storage.write("locks/gc", [b"lock"])
    before = storage.stat("locks/gc").mtime
    time.sleep(backend.clock_step)
    assert storage.touch("locks/gc") is True
    after = storage.stat("locks/gc")
    assert after.mtime > before
    assert storage.read("locks/gc") == b"lock" and after.size == 4
    assert [o.mtime for o in storage.list("locks")] == [after.mtime]


BAD_NAMES = [
    "",
    "/config",
    "/",
    "running/",
    "a//b",
    "..",
    ".",
    "a/../b",
    "../etc/passwd",
    "a/./b",
    "staging/.tmp-x",
    ".hidden",
    "a\\b",
    "a\x00b",
    "a b",
    "a\nb",
    "caf\u00e9",
    "x" * 256,
    "/".join(["abc"] * 300),  # over 1024 bytes in all
]


@pytest.mark.parametrize("bad", BAD_NAMES, ids=repr)
def test_bad_names_are_refused(storage: Storage, bad: str) -> None:
    calls: list[Callable[[], object]] = [
        lambda: storage.read(bad),
        lambda: storage.write(bad, [b"x"]),
        lambda: storage.create(bad, [b"x"]),
        lambda: storage.exists(bad),
        lambda: storage.stat(bad),
        lambda: storage.touch(bad),
        lambda: storage.delete(bad),
        lambda: storage.delete_all(bad),
        lambda: storage.location(bad),
        lambda: storage.remove_unfinished(bad, time.time()),
    ]
    if bad:  # "" lists everything
        calls.append(lambda: list(storage.list(bad)))
    for call in calls:
        with pytest.raises(InvalidObjectNameError):
            call()
    assert names(storage) == []


def test_readers_see_one_whole_version(storage: Storage) -> None:
    """Writers replacing one object while others read: every read is one whole version."""
    versions = [bytes([i]) * (1000 + 7919 * i) for i in range(4)]
    storage.write("points-cache/index", [versions[0]])
    stop = threading.Event()
    errors: list[str] = []

    def writer(k: int) -> None:
        for i in range(40):
            storage.write("points-cache/index", [versions[(k + i) % len(versions)]])

    def reader() -> None:
        while not stop.is_set():
            data = storage.read("points-cache/index")
            if data not in versions:
                errors.append(f"read {len(data)} bytes: not a version")

    readers = [threading.Thread(target=reader) for _ in range(2)]
    writers = [threading.Thread(target=writer, args=(k,)) for k in range(2)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert errors == []
    assert names(storage) == ["points-cache/index"]


def test_nothing_unfinished_after_writes_that_returned_or_raised(storage: Storage) -> None:
    storage.write("staging/aa/p-0", [b"x"])
    with pytest.raises(RuntimeError):
        storage.write("staging/aa/p-1", Exploding([b"y" * 100_000], 1))
    assert storage.remove_unfinished("staging", time.time() + 3600) == 0
    assert names(storage) == ["staging/aa/p-0"]


def test_full_device_raises_repository_full(
    backend: Backend, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with backend.full(tmp_path, request) as storage:
        storage.write("keep/me", [b"k" * MiB])
        big = [os.urandom(MiB) for _ in range(16)]  # 16 MiB on an 8 MiB device
        with pytest.raises(RepositoryFullError, match="no space left on device") as err:
            storage.write("staging/ff/disk-1.task-0", big)
        assert storage.location("staging/ff/disk-1.task-0") in str(err.value)
        assert names(storage) == ["keep/me"]  # nothing half-written shows
        assert storage.read("keep/me") == b"k" * MiB
        storage.write("staging/ff/small", [b"room for this"])  # and it goes on
        assert storage.read("staging/ff/small") == b"room for this"
        if isinstance(storage, LocalDirectoryStorage):  # not even a temp file is left
            assert [p.name for p in (storage.root / "staging" / "ff").iterdir()] == ["small"]


# --- the local directory itself --------------------------------------------------------


def test_local_objects_are_the_files(tmp_path: Path) -> None:
    s = LocalDirectoryStorage(tmp_path)
    s.write("staging/0f/disk-1.part-0", [b"VBPART02", b"entries"])
    path = tmp_path / "staging" / "0f" / "disk-1.part-0"
    assert path.read_bytes() == b"VBPART02entries"
    assert s.path("staging/0f/disk-1.part-0") == path
    assert s.location("staging/0f/disk-1.part-0") == str(path)
    assert oct(path.stat().st_mode & 0o777) == oct(0o644 & ~_umask())
    s.delete("staging/0f/disk-1.part-0")
    assert not path.exists() and path.parent.is_dir()  # directories are not objects
    s.write("staging/0f/disk-1.part-1", [b"1"])
    s.delete_all("staging/0f")
    assert not path.parent.exists() and (tmp_path / "staging").is_dir()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_local_list_shows_only_objects(tmp_path: Path) -> None:
    s = LocalDirectoryStorage(tmp_path)
    s.write("a/ok", [b"1"])
    (tmp_path / "a" / ".tmp-ok-1-abcd").write_bytes(b"half")  # a write in progress
    (tmp_path / "a" / "with space").write_bytes(b"?")  # no object has such a name
    (tmp_path / "a" / ".deleted-x").mkdir()
    (tmp_path / "a" / ".deleted-x" / "f").write_bytes(b"?")
    (tmp_path / "a" / "link").symlink_to(tmp_path / "a" / "ok")
    (tmp_path / "a" / "empty-dir").mkdir()
    assert names(s) == ["a/ok"]
    assert not s.exists("a/empty-dir")
    with pytest.raises(MissingObjectError):
        s.read("a/empty-dir")  # a directory is no object
    s.delete("a/empty-dir")
    assert (tmp_path / "a" / "empty-dir").is_dir()


def test_local_write_is_fsynced_before_it_returns(tmp_path: Path) -> None:
    s = LocalDirectoryStorage(tmp_path)
    synced: list[float] = []
    old, fsutil.fsync_observer = fsutil.fsync_observer, synced.append
    try:
        s.write("new/dir/obj", [b"x"])
        # the file, its directory, and each directory made for it into its parent
        assert len(synced) == 4
        synced.clear()
        s.write("new/dir/obj", [b"y"])
        assert len(synced) == 2  # file + directory
        synced.clear()
        s.delete("new/dir/obj")
        assert len(synced) == 1
    finally:
        fsutil.fsync_observer = old


KILLED_WRITER = """
import os, sys
from pathlib import Path
from repository.gc import gc
from repository.local_storage import LocalDirectoryStorage
from repository.repository import Repository
from repository.staging import job_dir_name, request_dir_name

class Dies:
    def __len__(self): return 2
    def __getitem__(self, i):
        if i == 1:
            os._exit(9)  # killed mid-write: no except, no finally runs
        if i > 1:
            raise IndexError(i)
        return b"x" * 300000

LocalDirectoryStorage(Path(sys.argv[1])).write("staging/ab/disk-1.task-0", Dies())
"""


def test_local_killed_writer_leaves_nothing_visible(tmp_path: Path) -> None:
    s = LocalDirectoryStorage(tmp_path)
    s.write("staging/cd/disk-1.task-0", [b"another group"])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], env=env, check=False)
    assert res.returncode == 9
    group = tmp_path / "staging" / "ab"
    (temp,) = group.iterdir()
    assert temp.name.startswith(fsutil.TMP_PREFIX) and temp.stat().st_size == 300000
    assert not s.exists("staging/ab/disk-1.task-0")
    assert names(s) == ["staging/cd/disk-1.task-0"]
    # younger than the cutoff: kept; older: the temp, then its emptied directory
    assert s.remove_unfinished("staging", temp.stat().st_mtime - 10) == 0
    assert s.remove_unfinished("staging", time.time() + 10, dry_run=True) == 2
    assert temp.exists()
    assert s.remove_unfinished("staging", time.time() + 10) == 2
    assert not group.exists()
    assert names(s) == ["staging/cd/disk-1.task-0"]  # the finished group is untouched
    assert (tmp_path / "staging").is_dir()  # the prefix itself stays


def test_local_read_error_names_the_file(tmp_path: Path) -> None:
    s = LocalDirectoryStorage(tmp_path)
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "repokey").symlink_to(tmp_path / "keys" / "repokey")  # ELOOP
    with pytest.raises(RepositoryError, match=r"cannot read .*keys/repokey") as err:
        s.read("keys/repokey")
    assert not isinstance(err.value, MissingObjectError)  # there, but unreadable


# --- the repository on its storage ----------------------------------------------------


def test_repository_objects_are_where_the_format_says(repo: Repository) -> None:
    """docs/repository-format.md's places and bytes, now written through the storage."""
    assert isinstance(repo.storage, LocalDirectoryStorage) and repo.storage.root == repo.path
    repo.begin_job("job-1")
    marker = repo.path / "running" / blake3.blake3(b"job-1").hexdigest()[:32]
    doc = json.loads(marker.read_bytes())
    assert set(doc) == {"job_id", "started", "host", "pid"} and doc["job_id"] == "job-1"
    (job,) = repo.running_jobs()
    assert job["marker"] == str(marker) and job["started"] <= marker.stat().st_mtime
    packed = pack_entries([(0, b"")])
    repo.stage_task_entries("job-1", "vm-1", 2000, "t0", packed)
    group = job_dir_name("job-1", "vm-1")
    task = blake3.blake3(b"t0").hexdigest()[:32]
    staged = (repo.path / "staging" / group / f"disk-2000.task-{task}").read_bytes()
    assert staged == b"VBTASK01" + packed + repo.auth.task_tag(group, 2000, "t0", packed)
    repo.stage_commit_part("r1", 2000, 0, packed)
    part = repo.path / "staging" / request_dir_name("r1") / "disk-2000.part-0"
    assert part.read_bytes().startswith(b"VBPART02" + packed)
    assert sorted(g for g, _ in repo.staging.leftovers()) == sorted([group, part.parent.name])
    repo.end_job("job-1")
    assert not marker.exists() and repo.running_jobs() == []


def test_gc_removes_what_a_killed_staging_write_left(repo: Repository) -> None:
    group = repo.path / "staging" / ("0" * 32)
    group.mkdir(parents=True)
    temp = group / f"{fsutil.TMP_PREFIX}disk-1.task-{'1' * 32}-77-abcd1234"
    temp.write_bytes(b"half of a task's entries")
    empty = repo.path / "staging" / ("1" * 32)  # killed between mkdir and the file
    empty.mkdir()
    old = time.time() - 3600
    for p in (temp, group, empty):
        os.utime(p, (old, old))
    repo.stage_commit_part("recent", 1, 0, pack_entries([(0, b"")]))
    assert list(repo.staging.leftovers()) != []  # "recent" only: temps are not objects
    r = gc(repo, grace=600.0, dry_run=True)
    assert (r.temps_removed, r.staged_removed) == (3, 0) and temp.exists()
    r = gc(repo, grace=600.0)
    assert (r.temps_removed, r.staged_removed) == (3, 0)
    assert not group.exists() and not empty.exists()
    assert [g for g, _ in repo.staging.leftovers()] == [request_dir_name("recent")]


# --- names (Hypothesis) ---------------------------------------------------------------

PART_CHARS = "abcXYZ019._:+=@,-"
TRICKY = st.text(alphabet="ab./\\-_ \x00\u00e9+:", max_size=40)
VALID_PART = st.text(alphabet=PART_CHARS, min_size=1, max_size=20).filter(
    lambda p: not p.startswith(".")
)


@given(st.one_of(TRICKY, st.text(max_size=60)))
def test_accepted_names_stay_inside_the_root(name: str) -> None:
    try:
        check_name(name)
    except InvalidObjectNameError:
        return
    parts = name.split("/")
    assert all(p and not p.startswith(".") and valid_part(p) for p in parts)
    assert not name.startswith("/") and len(name) <= MAX_NAME and name.isascii()
    root = Path("/srv/repo")
    path = LocalDirectoryStorage(root).path(name)
    # no normalisation happens: the path is the root and exactly these parts, below it
    assert os.path.normpath(path) == str(path)
    assert path.parts[len(root.parts) :] == tuple(parts)


@given(st.lists(VALID_PART, min_size=1, max_size=8))
def test_names_of_valid_parts_are_accepted(parts: list[str]) -> None:
    name = "/".join(parts)
    assert check_name(name) == name


@given(
    st.lists(VALID_PART, min_size=0, max_size=5),
    st.sampled_from(["", ".", "..", ".tmp-x", ".git", "a b", "a\\b", "\u00e9"]),
    st.integers(min_value=0, max_value=5),
)
def test_a_bad_part_anywhere_is_refused(parts: list[str], bad: str, at: int) -> None:
    parts.insert(min(at, len(parts)), bad)
    with pytest.raises(InvalidObjectNameError):
        check_name("/".join(parts))


@given(st.lists(VALID_PART, min_size=1, max_size=5))
def test_leading_or_trailing_slash_is_refused(parts: list[str]) -> None:
    name = "/".join(parts)
    for bad in ("/" + name, name + "/", name.replace("/", "//") if "/" in name else "/"):
        with pytest.raises(InvalidObjectNameError):
            check_name(bad)
