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

Ids never become paths. The commit that names staged entries reads them, then removes
their directories; gc removes directories of commits that never came once they are older
than its cutoff (gc.py).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import blake3

from common.packed_entries import PackedEntriesError, check_packed, entries_digest, iter_entries
from repository.errors import CorruptObjectError, InvalidRequestError
from repository.fsutil import fsync_dir, makedirs_durable, write_atomic
from repository.meta_auth import TAG_LEN, MetaAuth

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
    def __init__(self, root: Path, auth: MetaAuth) -> None:
        self.root = root
        self.auth = auth

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
        d = self.root / job_dir_name(job_id, vm_uuid)
        makedirs_durable(d)
        tag = self.auth.task_tag(d.name, disk_key, task_id, packed)
        write_atomic(
            d / self._task_name(disk_key, task_id),
            [TASK_MAGIC, packed, tag],
            f"entries of task {task_id} of disk {disk_key}",
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
        d = self.root / job_dir_name(job_id, vm_uuid)
        path = d / self._task_name(disk_key, task_id)
        what = f"staged entries of task {task_id!r:.80} of disk {disk_key}"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise InvalidRequestError(f"{what} are not staged (job {job_id!r:.80})") from None
        if len(data) < len(TASK_MAGIC) + TAG_LEN or not data.startswith(TASK_MAGIC):
            raise CorruptObjectError(f"{what} {path}", "not a staged task entries file")
        packed, tag = data[len(TASK_MAGIC) : -TAG_LEN], data[-TAG_LEN:]
        self._check_tag(self.auth.task_tag(d.name, disk_key, task_id, packed), tag, what, path)
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
        self._remove_dir(self.root / job_dir_name(job_id, vm_uuid))

    # --- commit parts (coordinator) ---------------------------------------------------

    def _dir(self, request_id: str) -> Path:
        return self.root / request_dir_name(request_id)

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
        d = self._dir(request_id)
        makedirs_durable(d)
        digest = self.auth.part_tag(d.name, disk_key, part, packed)
        write_atomic(
            d / self._name(disk_key, part),
            [MAGIC, packed, digest],
            f"commit part {part} of disk {disk_key}",
        )

    def load(self, request_id: str, disk_key: int, parts: int) -> Iterator[tuple[int, bytes]]:
        """Every entry of parts 0..parts-1 in order; a missing or damaged part raises."""
        d = self._dir(request_id)
        for n in range(parts):
            path = d / self._name(disk_key, n)
            what = f"commit part {n} of {parts} of disk {disk_key}"
            try:
                data = path.read_bytes()
            except FileNotFoundError:
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
            self._check_tag(self.auth.part_tag(d.name, disk_key, n, packed), digest, what, path)
            try:
                yield from iter_entries(packed)
            except PackedEntriesError as exc:
                raise CorruptObjectError(f"{what} {path}", str(exc)) from None

    def remove(self, request_id: str) -> None:
        self._remove_dir(self._dir(request_id))

    # --- both -------------------------------------------------------------------------

    def _check_tag(self, want: bytes, tag: bytes, what: str, path: Path) -> None:
        if not MetaAuth.same(want, tag):
            raise CorruptObjectError(
                f"{what} {path}",
                "fails its authentication: tampered or written with another key"
                if self.auth.keyed
                else "checksum mismatch",
            )

    def _remove_dir(self, d: Path) -> None:
        if d.is_dir():
            shutil.rmtree(d, ignore_errors=True)
            fsync_dir(self.root)

    def leftovers(self) -> Iterator[tuple[Path, float]]:
        """Staging directories with the newest mtime of the directory and its files."""
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return
        for e in entries:
            if not _DIR.fullmatch(e.name):
                continue
            try:
                newest = e.stat().st_mtime
                for f in os.scandir(e.path):
                    newest = max(newest, f.stat().st_mtime)
            except FileNotFoundError:
                continue
            yield Path(e.path), newest
