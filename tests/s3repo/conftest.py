"""Fixtures for a repository on the lab's real Ceph RGW: an S3 config file and a URL."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from repository.s3_storage import S3Storage
from tests.rgw import Rgw

KiB = 1024
MiB = 1024 * KiB
CHUNK = 256 * KiB


@dataclass(frozen=True)
class S3Repo:
    url: str  # s3://BUCKET/PREFIX
    config: Path  # the --s3-config file
    bucket: S3Storage  # the bucket's storage without the prefix (to look at objects)
    tmp: Path

    def cache(self, name: str = "cache") -> Path:
        return self.tmp / name


@pytest.fixture
def s3repo(tmp_path: Path, rgw: Rgw, s3_storage: S3Storage) -> S3Repo:
    cfg = tmp_path / "s3.toml"
    cfg.write_text(
        f'endpoint = "{rgw.endpoint}"\n'
        f'region = "{rgw.info.region}"\n'
        f'credentials_file = "{rgw.credentials_file}"\n'
        "part_size_mib = 5\n"  # S3's least: packs above it go up as multipart uploads
    )
    return S3Repo(f"s3://{s3_storage.loc.bucket}/repo", cfg, s3_storage, tmp_path)


def disk_image(path: Path, blocks: Sequence[bytes | None]) -> bytes:
    """An image of 256 KiB blocks (None: zeros); its bytes."""
    data = b"".join(b if b is not None else bytes(CHUNK) for b in blocks)
    path.write_bytes(data)
    return data


def rand() -> bytes:
    return os.urandom(CHUNK)
