"""Map entries staged before the commit that names them.

Two kinds, both in packed form (common/packed_entries.py), each file written atomically
and durably and carrying a tag (32 bytes, meta_auth.MetaAuth: keyed in an encrypted
repository and bound to where the entries belong, so that they cannot be changed on disk
before the commit turns them into an authenticated map):

- task entries, staged by the proxy that ran the task (TaskEntries):
  ``staging/<job>/disk-<key>.task-<task>`` where ``<job>`` is the first 32 hex digits of
  BLAKE3("task-entries", job id, VM uuid) and ``<task>`` those of BLAKE3(task id); the
  file is ``b"VBTASK01"``, the packed entries, their tag.
- commit parts, a coordinator's slices of one disk's entries (CommitPart, for results
  of proxies that do not stage): ``staging/<request>/disk-<key>.part-<n>`` where
  ``<request>`` is the first 32 hex digits of BLAKE3(request id); the file is
  ``b"VBPART02"``, the packed entries, their tag.

Ids never become paths. Each file is one object of the repository's storage (storage.py),
named ``staging/<job or request>/<file>``; a directory is the group of objects under it.
The commit that names staged entries reads them, then removes their group; gc removes
groups of commits that never came once their newest object is older than its cutoff, and
what writes killed midway left (gc.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import blake3

from common.packed_entries import PackedEntriesError, check_packed, entries_digest, iter_entries
from repository.errors import CorruptObjectError, InvalidRequestError, MissingObjectError
from repository.meta_auth import TAG_LEN, MetaAuth
from repository.storage import Storage

PREFIX = "staging"  # created on first use

MAGIC = b"VBPART02"
OLD_MAGIC = b"VBPART01"  # format 1: an unkeyed checksum, refused
TASK_MAGIC = b"VBTASK01"
_DIR = re.compile(r"[0-9a-f]{32}")


def _hex32(text: str) -> str:
    return blake3.blake3(text.encode()).hexdigest()[:32]


def request_dir_name(request_id: str) -> str:
    return _hex32(request_id)


def job_dir_name(job_id: str, vm_uuid: str) -> str:
    return _hex32(f"task-entries\0{job_id}\0{vm_uuid}")


class CommitStaging:
    def __init__(self, storage: Storage, auth: MetaAuth) -> None:
        self.storage = storage
        self.auth = auth

    @staticmethod
    def _object(group: str, file: str) -> str:
        return f"{PREFIX}/{group}/{file}"

    # --- task entries (proxies) -------------------------------------------------------

    @staticmethod
    def _task_name(disk_key: int, task_id: str) -> str:
        return f"disk-{disk_key}.task-{_hex32(task_id)}"

    def stage_task(
        self, job_id: str, vm_uuid: str, disk_key: int, task_id: str, packed: bytes
    ) -> int:
        """Store one task's entries durably; return how many. A task run again (a
        redelivery) replaces its entries: the commit checks them against the digest its
        result reported."""
        if not task_id:
            raise InvalidRequestError("task entries without a task id")
        try:
            count = check_packed(packed)
        except PackedEntriesError as exc:
            raise InvalidRequestError(f"entries of task {task_id!r:.80}: {exc}") from None
        group = job_dir_name(job_id, vm_uuid)
        tag = self.auth.task_tag(group, disk_key, task_id, packed)
        self.storage.write(
            self._object(group, self._task_name(disk_key, task_id)), [TASK_MAGIC, packed, tag]
        )
        return count

    def load_task(
        self,
        job_id: str,
        vm_uuid: str,
        disk_key: int,
        task_id: str,
        digest: bytes,
        count: int,
    ) -> Iterator[tuple[int, bytes]]:
        """The task's staged entries in order, after checking that they are the ones its
        result reported (``digest``, ``count``); missing, damaged or other entries raise."""
        group = job_dir_name(job_id, vm_uuid)
        name = self._object(group, self._task_name(disk_key, task_id))
        path = self.storage.location(name)
        what = f"staged entries of task {task_id!r:.80} of disk {disk_key}"
        try:
            data = self.storage.read(name)
        except MissingObjectError:
            raise InvalidRequestError(f"{what} are not staged (job {job_id!r:.80})") from None
        if len(data) < len(TASK_MAGIC) + TAG_LEN or not data.startswith(TASK_MAGIC):
            raise CorruptObjectError(f"{what} {path}", "not a staged task entries file")
        packed, tag = data[len(TASK_MAGIC) : -TAG_LEN], data[-TAG_LEN:]
        self._check_tag(self.auth.task_tag(group, disk_key, task_id, packed), tag, what, path)
        if not MetaAuth.same(entries_digest(packed), digest):
            raise InvalidRequestError(
                f"{what} are not the ones its result reported (digest mismatch: the task"
                " was run again after its result, or the result is not this task's)"
            )
        try:
            staged = check_packed(packed)
        except PackedEntriesError as exc:
            raise CorruptObjectError(f"{what} {path}", str(exc)) from None
        if staged != count:
            raise InvalidRequestError(f"{what}: {staged} entries, its result reported {count}")
        yield from iter_entries(packed)

    def remove_job(self, job_id: str, vm_uuid: str) -> None:
        self.remove_group(job_dir_name(job_id, vm_uuid))

    # --- commit parts (coordinator) ---------------------------------------------------

    @staticmethod
    def _name(disk_key: int, part: int) -> str:
        return f"disk-{disk_key}.part-{part}"

    def stage(self, request_id: str, disk_key: int, part: int, packed: bytes) -> None:
        """Store one part durably (a repeated part replaces itself: same content)."""
        if part < 0:
            raise InvalidRequestError(f"commit part number {part} is negative")
        try:
            check_packed(packed)
        except PackedEntriesError as exc:
            raise InvalidRequestError(f"commit part {part} of disk {disk_key}: {exc}") from None
        group = request_dir_name(request_id)
        digest = self.auth.part_tag(group, disk_key, part, packed)
        self.storage.write(self._object(group, self._name(disk_key, part)), [MAGIC, packed, digest])

    def load(self, request_id: str, disk_key: int, parts: int) -> Iterator[tuple[int, bytes]]:
        """Every entry of parts 0..parts-1 in order; a missing or damaged part raises."""
        group = request_dir_name(request_id)
        for n in range(parts):
            name = self._object(group, self._name(disk_key, n))
            path = self.storage.location(name)
            what = f"commit part {n} of {parts} of disk {disk_key}"
            try:
                data = self.storage.read(name)
            except MissingObjectError:
                raise InvalidRequestError(
                    f"{what} is not staged (request {request_id!r:.80})"
                ) from None
            if data.startswith(OLD_MAGIC):
                raise CorruptObjectError(
                    f"{what} {path}",
                    "staged before the repository upgrade: the commit must be sent again",
                )
            if len(data) < len(MAGIC) + TAG_LEN or not data.startswith(MAGIC):
                raise CorruptObjectError(f"{what} {path}", "not a commit part file")
            packed, digest = data[len(MAGIC) : -TAG_LEN], data[-TAG_LEN:]
            self._check_tag(self.auth.part_tag(group, disk_key, n, packed), digest, what, path)
            try:
                yield from iter_entries(packed)
            except PackedEntriesError as exc:
                raise CorruptObjectError(f"{what} {path}", str(exc)) from None

    def remove(self, request_id: str) -> None:
        self.remove_group(request_dir_name(request_id))

    # --- both -------------------------------------------------------------------------

    def _check_tag(self, want: bytes, tag: bytes, what: str, path: str) -> None:
        if not MetaAuth.same(want, tag):
            raise CorruptObjectError(
                f"{what} {path}",
                "fails its authentication: tampered or written with another key"
                if self.auth.keyed
                else "checksum mismatch",
            )

    def remove_group(self, group: str) -> None:
        """Remove a job's or a request's staged objects (a group of leftovers())."""
        self.storage.delete_all(f"{PREFIX}/{group}")

    def leftovers(self) -> Iterator[tuple[str, float]]:
        """Each group (a job's or a request's directory name) with the newest mtime of
        its objects."""
        newest: dict[str, float] = {}
        for obj in self.storage.list(PREFIX):
            parts = obj.name.split("/")
            if len(parts) == 3 and _DIR.fullmatch(parts[1]):
                newest[parts[1]] = max(newest.get(parts[1], 0.0), obj.mtime)
        yield from newest.items()

    def remove_unfinished(self, older_than: float, *, dry_run: bool = False) -> int:
        """Remove what staging writes killed midway left, older than ``older_than``."""
        return self.storage.remove_unfinished(PREFIX, older_than, dry_run=dry_run)
