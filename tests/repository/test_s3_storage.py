"""S3Storage on the real Ceph RGW, beyond the shared contract (test_storage.py runs that):
multipart, unfinished uploads, and each bad input across the network boundary (wrong
keys, a missing bucket, an endpoint that never answers, a closed port) giving an error
that says what was wrong. Then names and contents round trips (Hypothesis)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lab.ceph_rgw import write_credentials
from repository.errors import MissingObjectError, RepositoryError
from repository.s3_client import pieces
from repository.s3_config import MIN_PART
from repository.s3_storage import S3Storage
from tests.rgw import Rgw

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent.parent
MiB = 1 << 20


def test_large_object_goes_multipart_and_reads_back_equal(s3_storage: S3Storage) -> None:
    parts = [os.urandom(3 * MiB + 17), os.urandom(7 * MiB), b"", os.urandom(MiB + 5)]
    want = b"".join(parts)
    assert len(want) > 2 * s3_storage.loc.part_size
    s3_storage.write("packs/ab/big", parts)
    assert s3_storage.read("packs/ab/big") == want
    assert s3_storage.stat("packs/ab/big").size == len(want)
    head = s3_storage._client.head_object(Bucket=s3_storage.loc.bucket, Key="packs/ab/big")
    assert head["ETag"].strip('"').endswith("-3")  # three parts: the multipart ETag
    exact = [os.urandom(MIN_PART)]  # exactly one part's size: one PUT
    s3_storage.write("packs/ab/exact", exact)
    assert s3_storage.read("packs/ab/exact") == exact[0]
    head = s3_storage._client.head_object(Bucket=s3_storage.loc.bucket, Key="packs/ab/exact")
    assert "-" not in head["ETag"]


def test_a_file_goes_up_from_the_file_whole_or_in_parts(
    s3_storage: S3Storage, tmp_path: Path
) -> None:
    """write_file: botocore reads the bodies from the file (no copy in memory); one PUT up
    to a part's size, a multipart upload past it, the object equal to the file either way."""
    part = s3_storage.loc.part_size
    for name, size, parts in (
        ("packs/cd/small", MiB + 3, 0),
        ("packs/cd/exact", part, 0),
        ("packs/cd/big", 2 * part + 12345, 3),
    ):
        src = tmp_path / name.rsplit("/", 1)[1]
        data = os.urandom(size)
        src.write_bytes(data)
        before = s3_storage.parts_uploaded
        s3_storage.write_file(name, src)
        assert s3_storage.read(name) == data
        assert s3_storage.parts_uploaded - before == parts
        etag = s3_storage._client.head_object(Bucket=s3_storage.loc.bucket, Key=name)["ETag"]
        assert etag.strip('"').endswith(f"-{parts}") if parts else "-" not in etag
    with pytest.raises(RepositoryError, match=r"gone\.bin"):
        s3_storage.write_file("packs/cd/gone", tmp_path / "gone.bin")
    assert not s3_storage.exists("packs/cd/gone")


def test_prefix_keeps_repositories_apart(rgw: Rgw, s3_storage: S3Storage) -> None:
    a = S3Storage(replace(s3_storage.loc, prefix="site-a/repo"))
    b = S3Storage(replace(s3_storage.loc, prefix="site-a/repo2"))
    a.write("config", [b"A"])
    b.write("config", [b"B"])
    assert (a.read("config"), b.read("config")) == (b"A", b"B")
    assert [o.name for o in a.list("")] == ["config"]  # not repo2's, though it shares text
    assert a.location("config") == f"{rgw.endpoint}/{s3_storage.loc.bucket}/site-a/repo/config"
    keys = s3_storage._client.list_objects_v2(Bucket=s3_storage.loc.bucket)["Contents"]
    assert sorted(k["Key"] for k in keys) == ["site-a/repo/config", "site-a/repo2/config"]


def test_list_pages_through_more_than_one_page(s3_storage: S3Storage) -> None:
    names = [f"running/m{i:04d}" for i in range(1005)]  # S3's page is 1000 keys

    def put(chunk: list[str]) -> None:
        for n in chunk:
            s3_storage.write(n, [b"{}"])

    threads = [threading.Thread(target=put, args=(names[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [o.name for o in s3_storage.list("running")] == names
    s3_storage.delete_all("running")  # DeleteObjects in batches of 1000
    assert list(s3_storage.list("")) == []


def test_multipart_upload_step_by_step(s3_storage: S3Storage) -> None:
    """begin/upload_part/complete/abort (s3_pack_stream.py's steps): parts counted, the
    object shows only at completion, an aborted upload leaves nothing."""
    first, last = os.urandom(MIN_PART), os.urandom(MiB + 3)
    up = s3_storage.begin_upload("packs/ab/step")
    etags = [s3_storage.upload_part("packs/ab/step", up, 1, first)]
    assert not s3_storage.exists("packs/ab/step")  # nothing before the completion
    etags.append(s3_storage.upload_part("packs/ab/step", up, 2, last))
    assert (s3_storage.parts_uploaded, s3_storage.part_bytes) == (2, len(first) + len(last))
    s3_storage.complete_upload("packs/ab/step", up, list(enumerate(etags, start=1)))
    assert s3_storage.read("packs/ab/step") == first + last
    with pytest.raises(ValueError, match=r"part 0\): not in 1\.\.10000"):
        s3_storage.upload_part("packs/ab/other", "x", 0, b"")
    gone = s3_storage.begin_upload("packs/ab/other")
    s3_storage.upload_part("packs/ab/other", gone, 1, first)
    s3_storage.abort_upload("packs/ab/other", gone)
    bucket = s3_storage.loc.bucket
    assert s3_storage._client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert not s3_storage.exists("packs/ab/other")
    with pytest.raises(RepositoryError, match="packs/ab/other"):  # no such upload: named
        s3_storage.upload_part("packs/ab/other", gone, 2, last)


KILLED_UPLOAD = """
import os, sys
from pathlib import Path
from urllib.parse import urlsplit
from repository.s3_config import S3Location
from repository.s3_client import pieces
from repository.s3_storage import S3Storage

class Dies:
    def __len__(self): return 2
    def __getitem__(self, i):
        if i == 1:
            os._exit(9)  # killed mid-upload: nothing aborts the multipart upload
        if i > 1:
            raise IndexError(i)
        return b"x" * (11 * 1024 * 1024)  # two parts sent, then the kill

endpoint, bucket, creds = sys.argv[1:4]
loc = S3Location(endpoint=endpoint, bucket=bucket, credentials_file=Path(creds),
                 part_size=5 * 1024 * 1024)
S3Storage(loc).write("staging/ab/pack-1", Dies())
"""


def test_killed_multipart_upload_is_removed_by_remove_unfinished(
    rgw: Rgw, s3_storage: S3Storage
) -> None:
    s3_storage.write("staging/cd/done", [b"another group"])
    bucket = s3_storage.loc.bucket
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-c", KILLED_UPLOAD, rgw.endpoint, bucket, str(rgw.credentials_file)]
    assert subprocess.run(argv, env=env, check=False, timeout=300).returncode == 9
    (up,) = s3_storage._client.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert up["Key"] == "staging/ab/pack-1"
    assert not s3_storage.exists("staging/ab/pack-1")
    assert [o.name for o in s3_storage.list("")] == ["staging/cd/done"]  # nothing half-shown
    started = up["Initiated"].timestamp()
    assert s3_storage.remove_unfinished("staging", started - 10) == 0  # younger: kept
    assert s3_storage.remove_unfinished("other", time.time() + 10) == 0  # not under it
    assert s3_storage.remove_unfinished("staging", time.time() + 10, dry_run=True) == 1
    assert len(s3_storage._client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])) == 1
    assert s3_storage.remove_unfinished("staging", time.time() + 10) == 1
    assert s3_storage._client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert s3_storage.read("staging/cd/done") == b"another group"


def test_failed_multipart_write_aborts_its_upload(s3_storage: S3Storage) -> None:
    class Dies:
        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int) -> bytes:
            if i == 1:
                raise RuntimeError("the data source died")
            return b"y" * (11 * MiB)

    with pytest.raises(RuntimeError, match="data source died"):
        s3_storage.write("staging/ab/pack-2", Dies())  # type: ignore[arg-type]
    uploads = s3_storage._client.list_multipart_uploads(Bucket=s3_storage.loc.bucket)
    assert uploads.get("Uploads", []) == []  # aborted at once, not left for gc
    assert not s3_storage.exists("staging/ab/pack-2")


# --- bad input across the boundary ------------------------------------------------------


def test_wrong_secret_says_access_denied(rgw: Rgw, s3_storage: S3Storage, tmp_path: Path) -> None:
    s3_storage.write("config", [b"c"])
    creds = tmp_path / "creds"
    real = s3_storage.loc.credentials()
    write_credentials(creds, real.access_key, "not-the-secret-" + "x" * 25)
    bad = S3Storage(replace(s3_storage.loc, credentials_file=creds))
    with pytest.raises(RepositoryError, match=r"access denied by .*SignatureDoesNotMatch") as e:
        bad.read("config")
    assert rgw.endpoint in str(e.value) and "credentials" in str(e.value)
    assert "not-the-secret" not in str(e.value) and real.secret_key not in str(e.value)
    assert not isinstance(e.value, MissingObjectError)
    with pytest.raises(RepositoryError, match=r"access denied by .*check the S3 credentials"):
        bad.check_bucket()
    write_credentials(creds, "NOSUCHACCESSKEY00000", "whatever")
    with pytest.raises(RepositoryError, match="InvalidAccessKeyId"):
        S3Storage(replace(s3_storage.loc, credentials_file=creds)).write("x", [b"1"])
    assert real.secret_key not in repr(bad) and real.secret_key not in repr(real)


def test_missing_bucket_is_named(rgw: Rgw, s3_storage: S3Storage) -> None:
    s = S3Storage(rgw.location("no-such-bucket-here"))
    with pytest.raises(RepositoryError, match="bucket no-such-bucket-here does not exist") as e:
        s.read("config")
    assert not isinstance(e.value, MissingObjectError)  # not "no such object"
    assert rgw.endpoint in str(e.value)
    with pytest.raises(RepositoryError, match="does not exist"):
        list(s.list("running"))
    with pytest.raises(RepositoryError, match="does not exist"):
        s.write("config", [b"x"])
    # a HEAD has no error body: exists() cannot tell; check_bucket() says which
    assert not s.exists("config")
    with pytest.raises(RepositoryError, match="bucket no-such-bucket-here does not exist at"):
        s.check_bucket()
    s3_storage.check_bucket()  # one that exists


def test_endpoint_that_never_answers_times_out_clearly(rgw: Rgw, silent_port: int) -> None:
    loc = replace(
        rgw.location("any-bucket"),
        endpoint=f"http://127.0.0.1:{silent_port}",
        read_timeout=0.5,
        max_attempts=2,
    )
    with pytest.raises(RepositoryError, match=r"did not answer within 5/0\.5 s") as e:
        S3Storage(loc).read("config")
    assert f"127.0.0.1:{silent_port}" in str(e.value) and "2 attempts" in str(e.value)


def test_closed_port_says_cannot_connect(rgw: Rgw) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    loc = replace(rgw.location("any-bucket"), endpoint=f"http://127.0.0.1:{port}", max_attempts=2)
    with pytest.raises(RepositoryError, match=r"cannot connect to http://127\.0\.0\.1:\d+"):
        S3Storage(loc).write("config", [b"x"])


def test_tls_is_verified_against_the_ca_file(rgw: Rgw, s3_storage: S3Storage) -> None:
    loc = replace(s3_storage.loc, endpoint=rgw.info.tls_endpoint, ca_file=Path(rgw.info.ca_file))
    s = S3Storage(loc)
    s.write("config", [b"over TLS"])
    assert s.read("config") == b"over TLS" and s.location("config").startswith("https://")
    # the system's CAs do not know the lab's self-signed certificate
    untrusted = S3Storage(replace(loc, ca_file=None, max_attempts=1))
    with pytest.raises(RepositoryError, match=r"TLS with https://127\.0\.0\.1:\d+ failed") as e:
        untrusted.read("config")
    assert "certificate verify failed" in str(e.value)
    # a name the certificate does not carry (it is for IP 127.0.0.1 only)
    port = urlsplit(rgw.info.tls_endpoint).port
    wrong_name = S3Storage(replace(loc, endpoint=f"https://localhost:{port}", max_attempts=1))
    with pytest.raises(RepositoryError, match=r"TLS with https://localhost:\d+ failed"):
        wrong_name.write("config", [b"never sent"])
    assert s.read("config") == b"over TLS"


# --- round trips (Hypothesis) ----------------------------------------------------------

PART = st.text(alphabet="abcXYZ019._:+=@,-", min_size=1, max_size=12).filter(
    lambda p: not p.startswith(".")
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(PART, min_size=1, max_size=4), st.binary(max_size=4096))
def test_names_and_contents_round_trip(
    s3_storage: S3Storage, parts: list[str], data: bytes
) -> None:
    name = "rt/" + "/".join(parts)
    s3_storage.write(name, [data[: len(data) // 2], data[len(data) // 2 :]])
    assert s3_storage.read(name) == data
    assert [(o.name, o.size) for o in s3_storage.list("rt")] == [(name, len(data))]
    s3_storage.delete(name)
    assert not s3_storage.exists(name)


@given(
    st.lists(st.one_of(st.binary(max_size=40), st.binary(max_size=40).map(bytearray)), max_size=6),
    st.integers(min_value=1, max_value=16),
)
def test_pieces_cut_the_parts_exactly(parts: list[bytes], size: int) -> None:
    """How write cuts a multipart upload: every piece ``size`` bytes but the last, none
    empty, all ``bytes`` (what botocore may resend), together the parts' bytes."""
    out = list(pieces(parts, size))
    assert b"".join(out) == b"".join(parts)
    assert all(len(p) == size for p in out[:-1]) and all(0 < len(p) <= size for p in out)
    assert all(type(p) is bytes for p in out)
