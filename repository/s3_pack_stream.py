"""An open pack sent to S3 as it fills: multipart parts of its durable bytes.

A writer's open pack (s3_pack_upload.UploadingPack) grows by batches, each fdatasync'd
before its ack. Once the durable bytes not yet sent reach ``part_size`` (the S3 config's
``stream_part_mib``, at least S3's 5 MiB; 0, the default, does not stream), the next
part, exactly ``part_size`` bytes of the cache's file from where the last one ended, is
uploaded in the background: part ``n`` is always bytes ``[(n - 1) * part_size,
n * part_size)`` of the pack file. The first part begins the multipart upload of the
pack object. At most PARTS_AT_ONCE parts are in flight per process; an append that
finds no free slot (or its pack's part still going) sends nothing, and a part that ends
with enough durable bytes behind it sends the next one: the ack path never waits on
the network.

At seal (trailer written and fdatasync'd), :meth:`PackStream.finish` waits for the part
in flight, sends the rest of the file (the trailer with it) as the last part(s) and
completes the upload: only then does the pack object show, whole; its index object is
written after (s3_pack_upload.py). ``finish`` answers False, and the caller uploads the
file whole as without streaming, when no part was sent (a pack smaller than one part:
one PUT) or when a part failed twice (each attempt with botocore's retries: the failures
are in vmbackup_repo_s3_errors_total) or the last part or the completion failed; the
upload is then aborted (best effort). A writer killed mid-pack leaves an unfinished
upload that gc's remove_unfinished(``packs``) aborts once older than its cutoff; the
cache's open pack is uploaded whole by the next open's recovery (s3_pack_upload.recover).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

from repository.errors import RepositoryError
from repository.s3_config import MAX_PARTS, MIN_PART
from repository.s3_storage import S3Storage

PARTS_AT_ONCE = 2  # parts in flight per process
PART_ATTEMPTS = 2  # of one part, each with botocore's retries, before giving up

_slots = threading.BoundedSemaphore(PARTS_AT_ONCE)
_pool = ThreadPoolExecutor(PARTS_AT_ONCE, thread_name_prefix="pack-part")


class PackStream:
    """The multipart upload of one pack object from the open pack file ``fd``."""

    def __init__(self, storage: S3Storage, name: str, fd: int, part_size: int) -> None:
        if part_size < MIN_PART:
            raise ValueError(f"part_size {part_size}: below S3's {MIN_PART} bytes")
        self.storage = storage
        self.name = name
        self.part_size = part_size
        self._fd = fd
        self._cond = threading.Condition()
        self._durable = 0  # bytes of the file fdatasync'd
        self.sent = 0  # bytes sent as parts while the pack filled
        self._upload_id: str | None = None
        self._etags: list[str] = []  # of parts 1, 2, ...
        self._running = False  # a part job holds a slot
        self._closing = False
        self.failed: BaseException | None = None
        self.completed = False

    def offer(self, durable: int) -> None:
        """The file's first ``durable`` bytes are fdatasync'd: send a part if one is due
        and a slot is free (never waits)."""
        with self._cond:
            self._durable = durable
            if self._running or self._closing or self.failed is not None:
                return
            if durable - self.sent < self.part_size or not _slots.acquire(blocking=False):
                return
            self._running = True
        try:
            _pool.submit(self._run)
        except RuntimeError as exc:  # the interpreter is exiting: the seal uploads whole
            with self._cond:
                self.failed = exc
                self._running = False
                _slots.release()
                self._cond.notify_all()

    def _run(self) -> None:
        """Parts while enough durable bytes are ahead (the slot held throughout). The
        slot is given back and ``_running`` cleared under the lock that ``offer`` checks
        them with: an append in between is never left without its part."""
        failed: BaseException | None = None
        try:
            while True:
                with self._cond:
                    start = self.sent
                    due = self._durable - start >= self.part_size
                    # the last part number is kept for finish (the rest fails there)
                    if self._closing or not due or len(self._etags) + 1 >= MAX_PARTS:
                        break
                self._send(start, start + self.part_size)
                with self._cond:
                    self.sent = start + self.part_size
        except BaseException as exc:
            failed = exc
        finally:
            with self._cond:
                self.failed = self.failed or failed
                self._running = False
                _slots.release()
                self._cond.notify_all()

    def wait(self) -> None:
        """Until this pack has no part in flight."""
        with self._cond:
            while self._running:
                self._cond.wait()

    def _send(self, start: int, end: int) -> None:
        """Bytes ``[start, end)`` of the file as the next part, tried PART_ATTEMPTS times."""
        if self._upload_id is None:
            self._upload_id = self.storage.begin_upload(self.name)
        body = _pread_all(self._fd, start, end - start, self.name)
        number = len(self._etags) + 1
        for attempt in range(PART_ATTEMPTS):
            try:
                etag = self.storage.upload_part(self.name, self._upload_id, number, body)
                break
            except RepositoryError:
                if attempt + 1 == PART_ATTEMPTS:
                    raise
        self._etags.append(etag)

    def finish(self, end: int) -> bool:
        """The file's ``end`` bytes (the sealed pack) as the completed object; False if
        the caller must upload the file whole (see the module docstring). Called again
        after a failure of the caller's, it answers as the first time (nothing resent)."""
        with self._cond:
            self._closing = True
        self.wait()
        if self.completed:
            return True
        if self._upload_id is None or self.failed is not None:
            self._abort()
            return False
        try:
            start = self.sent
            while start < end:
                self._send(start, min(start + self.part_size, end))
                start = min(start + self.part_size, end)
            parts = list(enumerate(self._etags, start=1))
            self.storage.complete_upload(self.name, self._upload_id, parts)
        except (RepositoryError, ValueError) as exc:  # ValueError: past MAX_PARTS
            self.failed = exc
            self._abort()
            return False
        self.completed = True
        return True

    def _abort(self) -> None:
        if self._upload_id is not None:
            self.storage.abort_upload(self.name, self._upload_id)
            self._upload_id = None


def _pread_all(fd: int, offset: int, length: int, name: str) -> bytes:
    """``length`` bytes of ``fd`` at ``offset`` (durable bytes: all there)."""
    try:
        got = os.pread(fd, length, offset)  # one read (the page cache) as a rule
        while len(got) < length:
            more = os.pread(fd, length - len(got), offset + len(got))
            if not more:
                raise RepositoryError(
                    f"open pack for {name}: {len(got)} of {length} bytes at {offset}"
                    " (the file is shorter than its durable size)"
                )
            got += more
    except OSError as exc:
        raise RepositoryError(f"open pack for {name}: cannot read: {exc.strerror}") from exc
    return got
