"""A repository on a bucket with S3 Object Lock: every object the repository keeps is
written with a retention, so nobody (its own credentials included) can remove it early.

What is locked: ``config``, ``keys/``, ``packs/``, ``index/`` and ``points/`` (what a
restore needs); never ``locks/``, ``running/``, ``staging/``, ``holds/`` and the job
history (rewritten or removed as a matter of course). The retention (mode, period) is
the repository config's ``object_lock`` (repo_config.py), so every writer applies it:
a PUT carries ``ObjectLockMode`` and ``ObjectLockRetainUntilDate`` = now + period; a
multipart upload gets it by PutObjectRetention after its completion (RGW 16 ignores
the headers on CreateMultipartUpload: verified). RGW 16 needs no Content-MD5 on such a
PUT (AWS does: botocore adds a checksum there when the bucket asks for one).

Object Lock needs versioning, which changes two storage guarantees (storage.py):

- ``create``: RGW 16 ignores ``If-None-Match: *`` on a versioned bucket (verified: a
  second create succeeds). Here the first version wins instead: PUT, then list the
  key's versions; the creator whose version is the oldest since the last delete marker
  (by time, ties by id) made it, once a second listing a settle time later agrees; a
  loser removes its own version (never locked: retention comes after the win) and
  returns False.
- ``delete``: a plain DELETE only adds a delete marker. Here every version of the key is
  deleted by its id; a version still locked stays (S3 answers 403), hidden by a delete
  marker, and is recorded in ``kept`` with its retain-until for the caller's report
  (prune, gc). gc purges such versions once their retention has passed
  (s3_lock_maintenance.py).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal, cast

import botocore.exceptions as bx

from repository.errors import RepositoryError
from repository.repo_config import LOCK_MODES, MIN_LOCK_PERIOD, OBJECT_LOCK
from repository.s3_calls import LockArgs
from repository.s3_client import code
from repository.s3_repo_storage import S3RepoStorage
from repository.storage import Bytes, check_name

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

    from repository.s3_config import S3Location

LOCKED_TOP = ("keys", "packs", "index", "points")
# seconds a create waits to see rivals whose versions were stamped before its own but
# listed after (milliseconds on RGW; create is rare: init, keys, the gc lock)
CREATE_SETTLE = 1.0
Mode = Literal["COMPLIANCE", "GOVERNANCE"]


def locked_name(name: str) -> bool:
    """Whether the repository writes ``name`` with a retention."""
    return name == "config" or name.split("/", 1)[0] in LOCKED_TOP


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class LockPolicy:
    mode: Mode
    period: int  # seconds an object stays locked after it is written or extended

    def __post_init__(self) -> None:
        if self.mode not in LOCK_MODES:
            raise ValueError(f"Object Lock mode {self.mode!r}: not one of {LOCK_MODES}")
        if self.period < MIN_LOCK_PERIOD:
            raise ValueError(
                f"Object Lock period {self.period} s: at least {MIN_LOCK_PERIOD} s (a day)"
            )

    @classmethod
    def of_config(cls, config: dict[str, object]) -> LockPolicy | None:
        doc = config.get(OBJECT_LOCK)
        if not isinstance(doc, dict):
            return None
        return cls(cast(Mode, doc["mode"]), int(doc["period_seconds"]))

    def as_config(self) -> dict[str, str | int]:
        return {"mode": self.mode, "period_seconds": self.period}

    @property
    def extend_within(self) -> float:
        """Retention left below which maintenance extends an object still in use."""
        return self.period / 2

    def until(self, now: float) -> datetime:
        return datetime.fromtimestamp(now + self.period, UTC)


@dataclass(frozen=True)
class Version:
    key: str
    version_id: str
    marker: bool  # a delete marker
    latest: bool
    etag: str
    mtime: float


@dataclass(frozen=True)
class KeptLocked:
    """A version that was to be deleted and stays: Object Lock holds it until then."""

    name: str
    retain_until: float

    def as_dict(self) -> dict[str, str]:
        return {"object": self.name, "retain_until": iso(self.retain_until)}


class LockedS3Storage(S3RepoStorage):
    """S3RepoStorage on a versioned bucket with Object Lock (the module docstring)."""

    def __init__(
        self, location: S3Location, policy: LockPolicy, client: S3Client | None = None
    ) -> None:
        super().__init__(location, client)
        self.policy = policy
        self.kept: list[KeptLocked] = []  # versions delete could not remove (locked)

    def drain_kept(self) -> list[KeptLocked]:
        out, self.kept = self.kept, []
        return out

    # --- writing -------------------------------------------------------------------

    def _put_args(self, name: str) -> LockArgs:
        if not locked_name(name):
            return {}
        return {
            "ObjectLockMode": self.policy.mode,
            "ObjectLockRetainUntilDate": self.policy.until(time.time()),
        }

    def _completed(self, name: str, version_id: str | None) -> None:
        if locked_name(name):
            if version_id is None:
                raise RepositoryError(
                    f"{self.location(name)}: the bucket gave the upload no version id:"
                    " is versioning (Object Lock) on?"
                )
            self.set_retention(name, version_id, self.policy.until(time.time()))

    def set_retention(self, name: str, version_id: str, until: datetime) -> None:
        """Lock that version until ``until`` (only ever later: COMPLIANCE cannot be
        shortened, and GOVERNANCE is never shortened here either)."""
        key = self.key(name)
        self._call(
            lambda: self._client.put_object_retention(
                Bucket=self.loc.bucket,
                Key=key,
                VersionId=version_id,
                Retention={"Mode": self.policy.mode, "RetainUntilDate": until},
            ),
            "lock",
            name,
        )

    def create(self, name: str, parts: Sequence[Bytes]) -> bool:
        if self.exists(name):
            return False
        key, body = self.key(name), b"".join(parts)
        resp = self._call(
            lambda: self._client.put_object(Bucket=self.loc.bucket, Key=key, Body=body),
            "write",
            name,
        )
        mine = resp.get("VersionId")
        if mine is None:
            raise RepositoryError(
                f"cannot create {self.location(name)}: the bucket keeps no versions of it"
                " (Object Lock needs a versioned bucket)"
            )
        # RGW stamps a version's time before the version shows in the listing, so a
        # creator can list before an older rival shows: the win counts only when a
        # second listing, after that lag, still finds ours the first.
        for settle in (0.0, CREATE_SETTLE):
            time.sleep(settle)
            if self._first_version(name) != mine:  # another's came first: take ours back
                self.delete_version(name, mine)
                return False
        if locked_name(name):
            self.set_retention(name, mine, self.policy.until(time.time()))
        return True

    def _first_version(self, name: str) -> str | None:
        """The id of the oldest version of ``name`` since its last delete marker (ties
        in time by id, so every creator picks the same one)."""
        live: list[Version] = []
        for v in self.versions(name):  # newest first
            if v.marker:
                break
            live.append(v)
        return min(live, key=lambda v: (v.mtime, v.version_id)).version_id if live else None

    def copy_version(self, name: str, version_id: str) -> None:
        """Make a copy of that version of ``name`` its current version (locked anew)."""
        key = self.key(name)
        source = {"Bucket": self.loc.bucket, "Key": key, "VersionId": version_id}
        self._call(
            lambda: self._client.copy_object(
                Bucket=self.loc.bucket,
                Key=key,
                # the stubs type CopySource as a dict; botocore takes "bucket/key?versionId="
                CopySource=source,  # type: ignore[arg-type]
                **self._put_args(name),
            ),
            "restore",
            name,
        )

    # --- versions --------------------------------------------------------------------

    def all_versions(self, prefix: str) -> dict[str, list[Version]]:
        """Every version and delete marker of every key under ``prefix + "/"`` (""
        for all), by name, newest first."""
        full = self._prefix + (check_name(prefix) + "/" if prefix else "")
        return self._versions_under(full)

    def versions(self, name: str) -> list[Version]:
        """The versions of ``name``, newest first (delete markers included)."""
        return self._versions_under(self.key(name), exact=True).get(name, [])

    def _versions_under(self, full: str, *, exact: bool = False) -> dict[str, list[Version]]:
        pages = self._client.get_paginator("list_object_versions").paginate(
            Bucket=self.loc.bucket, Prefix=full
        )
        it = iter(pages)
        out: dict[str, list[Version]] = defaultdict(list)
        while (page := self._call(lambda: next(it, None), "list versions", "(all)")) is not None:
            rows: list[tuple[str, str, bool, bool, str, datetime]] = [
                (v["Key"], v["VersionId"], False, v["IsLatest"], v["ETag"], v["LastModified"])
                for v in page.get("Versions", [])
            ]
            rows += [
                (m["Key"], m["VersionId"], True, m["IsLatest"], "", m["LastModified"])
                for m in page.get("DeleteMarkers", [])
            ]
            for k, vid, marker, latest, etag, mtime in rows:
                if not exact or k == full:
                    name = k[len(self._prefix) :]
                    out[name].append(Version(k, vid, marker, latest, etag, mtime.timestamp()))
        for vs in out.values():  # the latest first, then by time (ties: as listed)
            vs.sort(key=lambda v: (not v.latest, -v.mtime))
        return dict(out)

    def retain_until(self, name: str, version_id: str | None = None) -> float | None:
        """That version's (else the current one's) retain-until; None when unlocked."""
        key = self.key(name)
        kw = {"VersionId": version_id} if version_id else {}
        resp = self._call(
            # the stubs cannot type **kw (VersionId or nothing): a real HEAD on RGW in the tests
            lambda: self._client.head_object(Bucket=self.loc.bucket, Key=key, **kw),  # type: ignore[arg-type]
            "stat",
            name,
        )
        until = resp.get("ObjectLockRetainUntilDate")
        return until.timestamp() if until is not None else None

    # --- deleting --------------------------------------------------------------------

    def delete_version(self, name: str, version_id: str) -> bool:
        """False when Object Lock refuses (the version is locked)."""
        key = self.key(name)

        def delete() -> bool:
            try:
                self._client.delete_object(Bucket=self.loc.bucket, Key=key, VersionId=version_id)
            except bx.ClientError as exc:
                if code(exc) in ("AccessDenied", "403"):
                    return False
                raise
            return True

        return self._call(delete, "delete", name)

    def purge(self, name: str, versions: Sequence[Version]) -> KeptLocked | None:
        """Delete ``versions`` of ``name`` (newest first) by id; what Object Lock keeps
        is hidden by a delete marker (unless the newest already is one) and returned."""
        left = [v for v in versions if not v.marker and not self.delete_version(name, v.version_id)]
        if not left:
            for m in (v for v in versions if v.marker):  # hiding nothing now
                self.delete_version(name, m.version_id)
            return None
        if not versions[0].marker:
            key, bucket = self.key(name), self.loc.bucket
            self._call(lambda: self._client.delete_object(Bucket=bucket, Key=key), "delete", name)
        until = max((self.retain_until(name, v.version_id) or 0.0) for v in left)
        return KeptLocked(name, until)

    def delete(self, name: str) -> None:
        kept = self.purge(name, self.versions(name))
        if kept is not None:
            self.kept.append(kept)

    def delete_all(self, prefix: str) -> None:
        for name, versions in self.all_versions(prefix).items():
            kept = self.purge(name, versions)
            if kept is not None:
                self.kept.append(kept)


def drain_kept(storage: object) -> list[KeptLocked]:
    """What deletes on ``storage`` left locked since the last call ([] unless locked)."""
    return storage.drain_kept() if isinstance(storage, LockedS3Storage) else []


def locked_until(storage: object, name: str) -> float | None:
    """When ``name`` on a locked storage is still locked: its retain-until, else None."""
    if not isinstance(storage, LockedS3Storage):
        return None
    until = storage.retain_until(name)
    return until if until is not None and until > time.time() else None


def check_bucket_lock(storage: S3RepoStorage) -> None:
    """RepositoryError naming the bucket unless Object Lock is enabled on it (and so
    versioning: S3 enables both at the bucket's creation)."""
    bucket = storage.loc.bucket

    def get() -> str:
        try:
            resp = storage._client.get_object_lock_configuration(Bucket=bucket)
        except bx.ClientError as exc:
            if code(exc) in ("ObjectLockConfigurationNotFoundError", "404"):
                return ""
            raise
        return str(resp.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled", ""))

    if storage._call(get, "check Object Lock of", "(bucket)") != "Enabled":
        raise RepositoryError(
            f"bucket {bucket} at {storage.loc.endpoint} has no Object Lock: a locked repository"
            " needs a bucket created with Object Lock enabled (e.g. `aws s3api create-bucket"
            f" --bucket {bucket} --object-lock-enabled-for-bucket`); nothing was written"
        )


def check_bucket_unversioned(storage: S3RepoStorage) -> None:
    """RepositoryError naming the bucket when it keeps versions: without Object Lock the
    storage's ``create`` (If-None-Match, ignored by RGW 16 on such a bucket) and
    ``delete`` (which would only add delete markers) would not do what they say."""
    bucket = storage.loc.bucket
    client = storage._client
    resp = storage._call(
        lambda: client.get_bucket_versioning(Bucket=bucket), "check versioning of", "(bucket)"
    )
    if resp.get("Status") in ("Enabled", "Suspended"):
        raise RepositoryError(
            f"bucket {bucket} at {storage.loc.endpoint} keeps object versions: a repository"
            " there needs `repo init --object-lock MODE` (a bucket created with Object Lock),"
            " or use a bucket without versioning; nothing was written"
        )
