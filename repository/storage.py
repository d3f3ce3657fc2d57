"""The storage under the repository: named objects behind one small interface.

In the manner of restic's backend (Save/Load/Stat/List/Remove) and kopia's blob storage:
a flat namespace of objects, each written whole and read back whole. Two
implementations: a local directory (local_storage.LocalDirectoryStorage) and S3
(s3_storage.S3Storage, tested on a real Ceph RGW; docs/object-storage.md); both meet
every guarantee below (tests/repository/test_storage.py runs the contract on both), so
callers assume no rename, no directories, no append and no partial overwrite.

Names are ``/``-separated relative keys, e.g. ``running/<32 hex>`` or
``staging/<32 hex>/disk-2000.task-<32 hex>`` (``check_name``): the parts are what the
repository format names (docs/repository-format.md), so the local directory holds the
same files at the same places as before this interface existed. No name may be both an
object and the prefix of other objects (locally a file cannot be a directory).

Guarantees, for every implementation:

- ``write(name, parts)`` stores the concatenation of ``parts`` under ``name``, atomically
  and durably: when it returns the object survives a crash or power loss; until then,
  and if it raises (a full disk, a crash, an exception from ``parts``), readers see the
  old object or none, never part of the new one, and ``list`` shows nothing unfinished.
  Writing an existing name replaces it whole (last writer wins). ``parts`` is a sequence
  so that an implementation may send it more than once (an S3 retry).
- ``create(name, parts)`` is ``write`` only if there is no object of that name (S3's
  ``If-None-Match: *``; locally a temp linked into place, which fails rather than
  replaces): True when this call made it, False when one was there, left untouched. Of
  concurrent creates of one name exactly one returns True: a commit record made this way
  needs no lock. On S3 a False can also be the caller's own create whose first request
  landed but whose answer was lost (the retry finds the object): a caller that must
  tell the two apart reads the object back and compares it with its bytes.
- ``read`` returns the whole object as last written; after ``write`` or ``delete``
  returns, every ``read``, ``exists``, ``stat`` and ``list`` sees it (read-after-write
  and list-after-write consistency, as S3 and RGW give).
- ``list(prefix)`` yields every object whose name starts with ``prefix + "/"`` (every
  object for ``""``), at any depth, in ascending order of name (S3's order), each with
  its size and mtime; objects written or deleted while it runs may or may not appear.
  ``children(prefix)`` yields only the next parts of deeper names (``a`` for ``p/a/x``;
  S3: a delimiter listing), so a lookup need not list everything below.
- ``mtime`` is seconds since the epoch in the storage's own clock (local: the file
  system's timestamps; S3: the server's Last-Modified, whole seconds), set by ``write``
  and by ``touch``. gc's grace logic compares mtimes with each other and with the
  storage's "now", which it reads with ``touch`` + ``stat`` of an object it owns; its
  grace absorbs the clock's granularity.
- ``delete`` is durable and idempotent (a missing object is fine). ``delete_all(prefix)``
  removes every object under ``prefix + "/"``, but not atomically: a crash may leave some,
  so callers remove only groups that nothing reads any more (staged entries after the
  commit that used them, or once older than gc's cutoff) and may remove them again.
- ``remove_unfinished(prefix, older_than)`` removes what writes under ``prefix`` that
  never finished left behind (a process killed mid-write: local temp files and the
  directories left empty; on S3, incomplete multipart uploads) if older than
  ``older_than``, and says how many; gc calls it with its cutoff.
- A missing object raises ``MissingObjectError`` naming it; a full device raises
  ``RepositoryFullError``; any other failure a ``RepositoryError`` naming the object
  (``location``: where an operator finds it).

What is on the interface and what is not yet:

- On it: staged map entries (staging.py), running-backup markers (running.py), the
  quarantine's records and its listing, reading and dropping of copies (quarantine.py),
  and the storage clock gc reads (gc.py).
- Not yet, each for a reason: the chunk store (chunk_store.py): its hot path writes a
  batch of chunk files, fsyncs them together from a pool and renames them, then fsyncs
  each directory once, marks unsettled renames in atime and answers have-queries with a
  stat; one ``write`` per chunk would cost a file and a directory fsync per chunk, and #22
  replaces files per chunk with pack files anyway (verify's and repair's checks of the
  chunk file's inode go with it). Moving a damaged chunk into the
  quarantine and back (quarantine.py ``put``/``put_back``) is a rename and a link between
  chunk files and quarantine files, so that part stays local with the chunk store (which
  is why Quarantine takes the local storage). Points (points.py): a point is published
  by renaming its directory into place (maps and meta appear together) and removed by
  renaming it aside; without rename a point needs a new commit protocol (maps first,
  meta last as the commit record, maps without meta as garbage), which changes what a
  crash leaves and the format document: that is #22's, with the pack files. The config,
  the key file (mode 0600) and gc's flock()ed lock file are read or created before the
  repository object exists, or are file-system locks.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import NamedTuple, Protocol

from repository.errors import InvalidObjectNameError

# Object payloads: anything a write(2) or an HTTP body takes without a copy.
Bytes = bytes | bytearray | memoryview

MAX_NAME = 1024  # S3's limit on a key, in bytes
MAX_PART = 255  # a file name (NAME_MAX)
# One part of a name: no separators, no spaces or control characters, nothing outside
# ASCII; never starting with "." (so never "." or "..", and never a local temp file
# ".tmp-..." or a point being removed ".deleted-...").
_PART = re.compile(r"[A-Za-z0-9_:+=@,-][A-Za-z0-9._:+=@,-]*")


class ObjectStat(NamedTuple):
    size: int  # bytes
    mtime: float  # seconds since the epoch, the storage's clock


class ObjectInfo(NamedTuple):
    name: str
    size: int
    mtime: float


def check_name(name: str) -> str:
    """``name`` if it is a valid object name, else InvalidObjectNameError saying why."""
    if not isinstance(name, str) or not name:
        raise InvalidObjectNameError(f"object name {name!r:.80}: empty or not a string")
    if len(name) > MAX_NAME or not name.isascii():
        raise InvalidObjectNameError(
            f"object name {name!r:.80}: not ASCII or longer than {MAX_NAME} bytes"
        )
    if name.startswith("/"):
        raise InvalidObjectNameError(f"object name {name!r:.80}: absolute (leading '/')")
    for part in name.split("/"):
        if not part:
            raise InvalidObjectNameError(f"object name {name!r:.80}: empty part")
        if part in (".", ".."):
            raise InvalidObjectNameError(f"object name {name!r:.80}: '.' or '..' part")
        if len(part) > MAX_PART or not _PART.fullmatch(part):
            raise InvalidObjectNameError(
                f"object name {name!r:.80}: part {part!r:.80} starts with '.', is longer"
                f" than {MAX_PART} or has a character outside A-Z a-z 0-9 . _ : + = @ , -"
            )
    return name


def valid_part(part: str) -> bool:
    """Whether ``part`` may be one ``/``-separated part of a name."""
    return len(part) <= MAX_PART and _PART.fullmatch(part) is not None


def check_prefix(prefix: str) -> str:
    """A listing prefix: ``""`` (everything) or a valid name (what is under it)."""
    return prefix if prefix == "" else check_name(prefix)


class Storage(Protocol):
    """Named whole objects; every method checks its name first (``check_name``)."""

    def location(self, name: str) -> str:
        """Where the object is, for messages (a path, a URL); no I/O."""
        ...

    def read(self, name: str) -> bytes:
        """The whole object; MissingObjectError when there is none."""
        ...

    def write(self, name: str, parts: Sequence[Bytes]) -> None:
        """Store ``b"".join(parts)`` under ``name``: atomic, durable, replacing."""
        ...

    def create(self, name: str, parts: Sequence[Bytes]) -> bool:
        """``write`` unless an object of that name exists: whether this call made it."""
        ...

    def exists(self, name: str) -> bool: ...

    def stat(self, name: str) -> ObjectStat:
        """Size and mtime; MissingObjectError when there is no such object."""
        ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object under ``prefix + "/"`` (any depth), ascending by name."""
        ...

    def children(self, prefix: str) -> Iterator[str]:
        """The parts that follow ``prefix + "/"`` in names of objects below it at a
        deeper level ("directories": S3's common prefixes), ascending, each once."""
        ...

    def touch(self, name: str) -> bool:
        """Set the object's mtime to the storage's now, keeping its bytes; False when
        there is no such object."""
        ...

    def delete(self, name: str) -> None:
        """Remove the object, durably; a missing one is fine."""
        ...

    def delete_all(self, prefix: str) -> None:
        """Remove every object under ``prefix + "/"`` (not atomically; ``prefix`` is a
        valid name: never everything)."""
        ...

    def remove_unfinished(self, prefix: str, older_than: float, *, dry_run: bool = False) -> int:
        """Remove leftovers of unfinished writes under ``prefix + "/"`` older than
        ``older_than`` (the storage's clock); how many (would be, when ``dry_run``)."""
        ...
