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

from repository.errors import RepositoryError
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
    for q in repo.quarantine:
        report.checked += 1
        h = q.id.hex()
        try:
            ino = _ino(repo, q.id)  # before the read: the file checked is the one moved
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


def _ino(repo: Repository, cid: bytes) -> int | None:
    try:
        return repo.chunks.path_of(cid).stat().st_ino
    except OSError:
        return None
