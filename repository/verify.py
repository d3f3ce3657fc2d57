"""verify: every map names only existing chunks; every (or a sample of) chunk re-hashed.

Never raises on damaged data: each problem becomes a line of the report naming
the object. Chunks found bad are moved to the quarantine (so no backup dedups against
them again, and the next one that meets their data stores a good copy) and traced back
to the points that use them.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

from common.progress import Progress, no_progress
from repository import metrics
from repository.chunk_store import ChunkFile, ChunkStore
from repository.errors import RepositoryError
from repository.fixed_index import ZERO_ID
from repository.references import uses
from repository.repository import Repository


@dataclass(frozen=True, slots=True)
class Problem:
    kind: str  # point, map, missing-chunk, bad-chunk
    obj: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.obj}: {self.detail}"


@dataclass
class VerifyReport:
    points: int = 0
    maps: int = 0
    references: int = 0
    chunks_checked: int = 0
    chunks_total: int = 0
    bytes_checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)  # hex ids moved aside by this run

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(
    repo: Repository,
    sample: int | None = None,
    *,
    progress: Progress = no_progress,
    rng: random.Random | None = None,
) -> VerifyReport:
    """``progress``: bytes of chunk files read of those to read (stored bytes, as they
    are on disk)."""
    report = VerifyReport()
    _check_points(repo, report)
    bad = _check_chunks(repo, report, sample, rng or random.Random(), progress)
    if bad:
        _trace_users(repo, bad, report)
    metrics.REPO_VERIFY_QUARANTINED.inc(len(report.quarantined))
    metrics.REPO_VERIFY_PROBLEMS.set(len(report.problems))
    metrics.REPO_VERIFY_CHUNKS.inc(report.chunks_checked)
    return report


def _check_points(repo: Repository, report: VerifyReport) -> None:
    ps = repo.point_store
    for ref in ps.point_refs():
        name = f"{ref.vm_uuid}/{ref.point_id}"
        try:
            point = ps.load(ref)
        except (RepositoryError, OSError) as exc:
            report.problems.append(Problem("point", name, str(exc)))
            continue
        report.points += 1
        for disk in point.disks:
            try:
                dmap = ps.load_map(ref, disk)
            except (RepositoryError, OSError) as exc:
                report.problems.append(Problem("map", f"{name} disk {disk.key}", str(exc)))
                continue
            report.maps += 1
            prev = ZERO_ID
            for index, cid in dmap.iter_ids():
                report.references += 1
                if cid == prev:
                    continue
                prev = cid
                if not repo.chunks.exists(cid):
                    q = repo.quarantine.get(cid)
                    why = f"quarantined as damaged ({q.reason})" if q else "not in the repository"
                    report.problems.append(
                        Problem(
                            "missing-chunk",
                            f"{point.vm_uuid}/{point.id} disk {disk.key} chunk #{index} "
                            f"(offset {index * dmap.chunk_size})",
                            f"names chunk {cid.hex()}, which is {why}",
                        )
                    )


def _check_chunks(
    repo: Repository,
    report: VerifyReport,
    sample: int | None,
    rng: random.Random,
    progress: Progress,
) -> set[bytes]:
    if not isinstance(repo.chunks, ChunkStore):
        bad = _check_packs(repo, report, sample, rng, progress)
        if repo.chunks.legacy is not None:  # an unfinished upgrade from version 2
            bad |= _check_chunk_files(repo, repo.chunks.legacy, report, sample, rng, progress)
        return bad
    return _check_chunk_files(repo, repo.chunks, report, sample, rng, progress)


def _check_chunk_files(
    repo: Repository,
    store: ChunkStore,
    report: VerifyReport,
    sample: int | None,
    rng: random.Random,
    progress: Progress,
) -> set[bytes]:
    files: list[ChunkFile]
    if sample is None:
        # a pass of stats first, for the progress's total: cheap beside reading every chunk
        total = sum(cf.size for cf in store.iter_chunks())
        files_iter = store.iter_chunks()
    else:  # reservoir sampling: memory is the sample, not the repository
        files = []
        for n, cf in enumerate(store.iter_chunks(with_stat=False)):
            report.chunks_total += 1
            if len(files) < sample:
                files.append(cf)
            else:
                j = rng.randrange(n + 1)
                if j < sample:
                    files[j] = cf
        files = [ChunkFile(cf.id, cf.path, _size(cf.path), 0.0) for cf in files]
        total = sum(cf.size for cf in files)
        files_iter = iter(files)
    bad: set[bytes] = set()
    done = 0
    progress(done, total)
    for cf in files_iter:
        done += cf.size
        progress(done, max(total, done))  # chunks stored since the first pass count too
        if sample is None:
            report.chunks_total += 1
        report.chunks_checked += 1
        try:
            ino: int | None = os.stat(cf.path).st_ino  # the file read is the one moved
        except OSError:
            ino = None
        try:
            data = repo.decode_chunk(cf.id, store.read(cf.id))
            report.bytes_checked += len(data)
            continue
        except (RepositoryError, OSError) as exc:
            why = str(exc)
        except Exception as exc:  # never crash on corrupt data
            why = f"unexpected: {exc!r}"
        bad.add(cf.id)
        report.problems.append(Problem("bad-chunk", str(cf.path), why))
        _quarantine(repo, store, report, cf, why, ino)
    return bad


def _size(path: os.PathLike[str] | str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0  # gone: verify says so when it reads it


def _check_packs(
    repo: Repository,
    report: VerifyReport,
    sample: int | None,
    rng: random.Random,
    progress: Progress,
) -> set[bytes]:
    from repository.pack_verify import check_packs

    bad: set[bytes] = set()

    def found(cid: bytes, where: str, why: str, quarantined: bool) -> None:
        bad.add(cid)
        report.problems.append(Problem("bad-chunk", f"chunk {cid.hex()} in {where}", why))
        if quarantined:
            report.quarantined.append(cid.hex())

    checked, total, nbytes = check_packs(repo, sample, rng, found, progress)
    report.chunks_checked += checked
    report.chunks_total += total
    report.bytes_checked += nbytes
    return bad


def _quarantine(
    repo: Repository,
    store: ChunkStore,
    report: VerifyReport,
    cf: ChunkFile,
    why: str,
    ino: int | None,
) -> None:
    try:
        moved = repo.quarantine.put(store, cf.id, why, ino=ino)
    except (RepositoryError, OSError) as exc:
        report.problems.append(Problem("quarantine", cf.id.hex(), f"cannot move aside: {exc}"))
        return
    if moved:
        report.quarantined.append(cf.id.hex())


def _trace_users(repo: Repository, bad: set[bytes], report: VerifyReport) -> None:
    for use in uses(repo, bad.__contains__):
        report.problems.append(
            Problem("damaged-point", str(use), f"uses damaged chunk {use.chunk_id.hex()}")
        )
