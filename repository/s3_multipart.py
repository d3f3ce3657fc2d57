"""Multipart uploads on S3, whole (``_multipart``: ``write`` of an object over one part)
or step by step (s3_pack_stream.py: an open pack's parts as it fills), and the abort of
uploads never completed (``remove_unfinished``: a writer or gc killed mid-upload)."""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator, Sequence

import botocore.exceptions as bx

from repository.errors import RepositoryError
from repository.s3_calls import S3Calls
from repository.s3_config import MAX_PARTS
from repository.s3_file_body import FileRange, request_body
from repository.storage import check_name

# A part's bytes: in memory, or a range of a local file read as it is sent.
PartBody = bytes | FileRange


class S3Multipart(S3Calls):
    """``parts_uploaded`` and ``part_bytes`` count the multipart parts this storage sent
    and their bytes (botocore's retries not counted): tests and benchmarks."""

    parts_uploaded = 0
    part_bytes = 0
    _count_lock = threading.Lock()

    def _multipart(
        self, name: str, key: str, first: PartBody, second: PartBody, rest: Iterator[PartBody]
    ) -> None:
        upload_id = self.begin_upload(name)
        done: list[tuple[int, str]] = []
        try:
            for number, body in enumerate(itertools.chain((first, second), rest), start=1):
                if number > MAX_PARTS:
                    raise RepositoryError(
                        f"cannot write {self.location(name)}: over {MAX_PARTS} parts"
                        f" of {self.loc.part_size} bytes"
                    )
                done.append((number, self.upload_part(name, upload_id, number, body)))
            self.complete_upload(name, upload_id, done)
        except BaseException:
            self.abort_upload(name, upload_id)
            raise

    def begin_upload(self, name: str) -> str:
        """CreateMultipartUpload of ``name``: the upload's id. Nothing shows under the
        name until ``complete_upload``; an upload never completed nor aborted is what
        ``remove_unfinished`` aborts."""
        key = self.key(name)
        up = self._call(
            lambda: self._client.create_multipart_upload(Bucket=self.loc.bucket, Key=key),
            "write",
            name,
        )
        return up["UploadId"]

    def upload_part(self, name: str, upload_id: str, number: int, body: PartBody) -> str:
        """UploadPart ``number`` (1..MAX_PARTS; every part but the last >= MIN_PART
        bytes, which CompleteMultipartUpload checks): the part's ETag."""
        if not 1 <= number <= MAX_PARTS:
            raise ValueError(f"upload_part({name!r}, part {number}): not in 1..{MAX_PARTS}")
        key = self.key(name)
        resp = self._call(
            lambda: self._client.upload_part(
                Bucket=self.loc.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=request_body(body),
            ),
            "write",
            name,
        )
        with self._count_lock:
            self.parts_uploaded += 1
            self.part_bytes += len(body)
        return resp["ETag"]

    def complete_upload(self, name: str, upload_id: str, parts: Sequence[tuple[int, str]]) -> None:
        """CompleteMultipartUpload of (part number, ETag) ``parts``: the object shows,
        whole; then what a locked bucket adds (``_completed``)."""
        key = self.key(name)
        listed = [{"PartNumber": n, "ETag": etag} for n, etag in parts]
        resp = self._call(
            lambda: self._client.complete_multipart_upload(
                Bucket=self.loc.bucket,
                Key=key,
                UploadId=upload_id,
                # the stubs want CompletedPartTypeDef; this dict is that shape, and RGW
                # completes it in test_s3_pack_stream and test_s3_storage
                MultipartUpload={"Parts": listed},  # type: ignore[typeddict-item]
            ),
            "write",
            name,
        )
        self._completed(name, resp.get("VersionId"))

    def abort_upload(self, name: str, upload_id: str) -> None:
        """AbortMultipartUpload, best effort: one that fails stays for
        ``remove_unfinished``."""
        with contextlib.suppress(bx.BotoCoreError, bx.ClientError):
            self._client.abort_multipart_upload(
                Bucket=self.loc.bucket, Key=self.key(name), UploadId=upload_id
            )

    def remove_unfinished(self, prefix: str, older_than: float, *, dry_run: bool = False) -> int:
        full = self._prefix + check_name(prefix) + "/"
        pages = self._client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.loc.bucket, Prefix=full
        )
        it = iter(pages)
        removed = 0
        while (page := self._call(lambda: next(it, None), "list uploads", prefix)) is not None:
            for up in page.get("Uploads", []):
                if up["Initiated"].timestamp() >= older_than:
                    continue
                removed += 1
                if not dry_run:
                    key, uid = up["Key"], up["UploadId"]
                    self._call(
                        # mypy cannot type a lambda's defaults (bound per loop turn);
                        # the real abort runs in test_s3_pack_stream's kill test
                        lambda k=key, u=uid: self._client.abort_multipart_upload(  # type: ignore[misc]
                            Bucket=self.loc.bucket, Key=k, UploadId=u
                        ),
                        "abort the upload of",
                        key[len(self._prefix) :],
                        missing_ok=True,
                    )
        return removed
