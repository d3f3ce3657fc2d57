"""The real Ceph RADOS Gateway for tests: one per session (lab/ceph_rgw.py), a bucket each.

``rgw`` (session fixture, in tests/conftest.py) starts the lab's gateway on
``$VMBACKUP_TEST_RGW_DIR`` (default: the lab's own /tmp/vmbackup-rgw, so a gateway
started by hand with ``python -m lab rgw start`` is reused) and stops it at the end of
the session unless it was already running before. ``new_bucket`` makes an empty bucket
with a fresh name; ``drop_bucket`` empties and removes it (S3 deletes no bucket that
holds objects or unfinished uploads).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lab import ceph_rgw
from repository.s3_config import MIN_PART, S3Location
from repository.s3_storage import S3Storage


@dataclass(frozen=True)
class Rgw:
    info: ceph_rgw.RgwInfo

    @property
    def data_dir(self) -> Path:
        return Path(self.info.data_dir)

    @property
    def endpoint(self) -> str:
        return self.info.endpoint

    @property
    def credentials_file(self) -> Path:
        return Path(self.info.credentials_file)

    def location(self, bucket: str, **kw: object) -> S3Location:
        """A location on the lab, small parts (S3's least) so multipart is cheap to reach."""
        args: dict[str, object] = {
            "endpoint": self.endpoint,
            "bucket": bucket,
            "region": self.info.region,
            "credentials_file": self.credentials_file,
            "part_size": MIN_PART,
            "max_attempts": 3,
            "connect_timeout": 5.0,
            "read_timeout": 30.0,
        }
        return S3Location(**(args | kw))  # type: ignore[arg-type]

    def new_bucket(self, **kw: object) -> S3Storage:
        s = S3Storage(self.location(f"t-{uuid.uuid4().hex[:20]}", **kw))
        s.create_bucket()
        return s

    def admin(self, *argv: str) -> str:
        return ceph_rgw.admin(self.data_dir, *argv)

    def set_bucket_quota(self, bucket: str, max_bytes: int) -> None:
        self.admin("quota", "set", "--quota-scope=bucket", f"--bucket={bucket}",
                   f"--max-size={max_bytes}")  # fmt: skip
        self.admin("quota", "enable", "--quota-scope=bucket", f"--bucket={bucket}")


def drop_bucket(storage: S3Storage) -> None:
    """Best effort: a leftover test bucket harms nothing but the gateway's RAM."""
    client = storage._client
    bucket = storage.loc.bucket
    with contextlib.suppress(Exception):
        for ups in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
            for up in ups.get("Uploads", []):
                client.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})  # type: ignore[typeddict-item]
        client.delete_bucket(Bucket=bucket)


@contextlib.contextmanager
def session_rgw() -> Iterator[Rgw]:
    data_dir = Path(os.environ.get("VMBACKUP_TEST_RGW_DIR", str(ceph_rgw.DEFAULT_DIR)))
    info = ceph_rgw.start(data_dir)
    try:
        yield Rgw(info)
    finally:
        if not info.reused:  # one that ran before the session is the developer's
            ceph_rgw.stop(data_dir)
