"""repair: re-check every quarantined chunk; list the points that still need data.

For each quarantined id: a good copy at its normal place (a later backup stored the
same data) means healed, and the quarantined copy is dropped; a bad copy there is
quarantined in its turn; with none there, the quarantined copy is read again and put
back when it now checks good (a read error that passed). Then every point naming a
chunk that is still quarantined, or missing outright, is listed by VM, point, disk and
offset: those restores fail until the data is supplied again (see docs/operations.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from repository.chunk_store import ChunkStore
from repository.errors import RepositoryError
from repository.pack_quarantine import put_back as pack_put_back
from repository.pack_quarantine import quarantine_blob
from repository.pack_store import PackStore
from repository.references import ChunkUse, uses
from repository.repository import Repository


@dataclass
class RepairReport:
    checked: int = 0  # quarantined ids looked at
    healed: list[str] = field(default_factory=list)  # a good copy is in place: dropped
    put_back: list[str] = field(default_factory=list)  # the quarantined copy checked good
    damaged: list[str] = field(default_factory=list)  # still quarantined: no good copy
    missing_uses: list[ChunkUse] = field(default_factory=list)  # points still needing data
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.damaged or self.missing_uses or self.errors)


def repair(repo: Repository) -> RepairReport:
    report = RepairReport()
    still: set[bytes] = set()
    if isinstance(repo.chunks, PackStore):
        _repair_packs(repo, repo.chunks, report, still)
    for q in [] if repo.packed else repo.quarantine:
        report.checked += 1
        h = q.id.hex()
        assert isinstance(repo.chunks, ChunkStore)
        try:
            ino = _ino(repo.chunks, q.id)  # before the read: the file checked is the one moved
            if ino is not None:
                if _good(repo, q.id):
                    repo.quarantine.drop(q.id)
                    report.healed.append(h)
                    continue
                repo.quarantine.put(repo.chunks, q.id, "damaged again (repair)", ino=ino)
            elif _quarantined_copy_good(repo, q.id):
                repo.quarantine.put_back(repo.chunks, q.id)
                report.put_back.append(h)
                continue
        except (RepositoryError, OSError) as exc:
            report.errors.append(f"chunk {h}: {exc}")
        still.add(q.id)
        report.damaged.append(h)
    # stat per run of one id: what repair reports is what a restore would meet now
    report.missing_uses = list(uses(repo, lambda cid: cid in still or not repo.chunks.exists(cid)))
    return report


def _repair_packs(
    repo: Repository, store: PackStore, report: RepairReport, still: set[bytes]
) -> None:
    """The same decisions for packs: another indexed copy that checks good heals; a bad
    one is quarantined in its turn; the quarantined place checking good is indexed again."""
    for q in repo.quarantine:
        report.checked += 1
        h = q.id.hex()
        try:
            locs = store.locations(q.id)
            if locs:
                if _good(repo, q.id):
                    repo.quarantine.drop(q.id)
                    report.healed.append(h)
                    continue
                data = store.read_at(q.id, locs[0])
                quarantine_blob(store, repo.quarantine, q.id, locs[0], data, "damaged (repair)")
            elif _quarantined_copy_good(repo, q.id) and pack_put_back(store, repo.quarantine, q.id):
                report.put_back.append(h)
                continue
        except (RepositoryError, OSError) as exc:
            report.errors.append(f"chunk {h}: {exc}")
        still.add(q.id)
        report.damaged.append(h)


def _good(repo: Repository, cid: bytes) -> bool:
    try:
        repo.read_chunk(cid)
    except RepositoryError:
        return False
    return True


def _quarantined_copy_good(repo: Repository, cid: bytes) -> bool:
    try:
        data = repo.quarantine.read_copy(cid)
        repo.decode_chunk(cid, data)
    except (RepositoryError, OSError):
        return False
    return True


def _ino(store: ChunkStore, cid: bytes) -> int | None:
    try:
        return store.path_of(cid).stat().st_ino
    except OSError:
        return None
