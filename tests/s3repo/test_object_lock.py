"""A repository on a bucket with S3 Object Lock, on the lab's real Ceph RGW (no mock):
every object a restore needs is written locked; the repository's own keys cannot remove
a locked version, and what they can do (hide with a delete marker, overwrite) is found by
the retention maintenance and undone by `repo undelete`; prune and gc leave what is
locked, say until when, and remove it once the lock has passed."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import botocore.exceptions as bx
import pytest

from repository import metrics, repo_config
from repository.errors import InvalidRequestError, RepositoryError
from repository.gc import gc, referenced_chunks
from repository.import_disk import import_disk
from repository.repository import Repository
from repository.restore import restore_disk
from repository.s3_client import make_client
from repository.s3_lock_maintenance import extend_retention, undelete
from repository.s3_object_lock import LockedS3Storage, LockPolicy
from repository.verify import verify
from tests.repository.test_cli import vmb
from tests.rgw import Rgw
from tests.s3repo.conftest import CHUNK, MiB, S3Repo, disk_image, rand

DAY = 86400
POLICY = LockPolicy("GOVERNANCE", DAY)  # GOVERNANCE: the test can clean up (bypass)


@pytest.fixture
def lrepo(tmp_path: Path, rgw: Rgw) -> Iterator[S3Repo]:
    """An S3Repo on a fresh bucket created with Object Lock; emptied with the governance
    bypass afterwards."""
    from repository.s3_storage import S3Storage

    bucket = S3Storage(rgw.location(f"ol-{uuid.uuid4().hex[:20]}"))
    client = bucket._client
    client.create_bucket(Bucket=bucket.loc.bucket, ObjectLockEnabledForBucket=True)
    cfg = tmp_path / "s3.toml"
    cfg.write_text(
        f'endpoint = "{rgw.endpoint}"\nregion = "{rgw.info.region}"\n'
        f'credentials_file = "{rgw.credentials_file}"\npart_size_mib = 5\n'
    )
    yield S3Repo(f"s3://{bucket.loc.bucket}/repo", cfg, bucket, tmp_path)
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket.loc.bucket):
        for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
            client.delete_object(
                Bucket=bucket.loc.bucket,
                Key=v["Key"],
                VersionId=v["VersionId"],
                BypassGovernanceRetention=True,
            )
    client.delete_bucket(Bucket=bucket.loc.bucket)


def _init(r: S3Repo, **kw: object) -> Repository:
    args: dict[str, object] = {"chunk_size": CHUNK, "packs": True, "pack_size": 6 * MiB}
    return Repository.init(
        r.url,
        s3_config=r.config,
        cache_dir=r.cache(),
        object_lock=POLICY,
        # a dict of mixed values for Repository.init's keywords: mypy cannot type it
        **(args | kw),  # type: ignore[arg-type]
    )


def _open(r: S3Repo, cache: str) -> Repository:
    return Repository.open(r.url, s3_config=r.config, cache_dir=r.cache(cache))


def _until(r: S3Repo, key: str, version: str | None = None) -> float | None:
    kw = {"VersionId": version} if version else {}
    # a real HEAD on RGW; the stubs cannot type **kw (VersionId or nothing)
    head = r.bucket._client.head_object(Bucket=r.bucket.loc.bucket, Key=key, **kw)  # type: ignore[arg-type]
    u = head.get("ObjectLockRetainUntilDate")
    return u.timestamp() if u else None


def _versions(r: S3Repo, prefix: str) -> list[tuple[str, str]]:
    out = []
    pages = r.bucket._client.get_paginator("list_object_versions")
    for page in pages.paginate(Bucket=r.bucket.loc.bucket, Prefix=prefix):
        out += [(v["Key"], v["VersionId"]) for v in page.get("Versions", [])]
    return out


def _shorten(r: S3Repo, keys: list[tuple[str, str]], seconds: float) -> float:
    """What time does to a lock, sooner: GOVERNANCE may be shortened with the bypass.
    Each key's lock ends ``seconds`` after its own request (a loaded machine takes
    seconds over many keys, and a retain-until in the past is refused); the last end."""
    last = 0.0
    for key, vid in keys:
        until = datetime.now(UTC) + timedelta(seconds=seconds)
        last = until.timestamp()
        r.bucket._client.put_object_retention(
            Bucket=r.bucket.loc.bucket,
            Key=key,
            VersionId=vid,
            Retention={"Mode": "GOVERNANCE", "RetainUntilDate": until},
            BypassGovernanceRetention=True,
        )
    return last


def test_locked_point_survives_delete_and_overwrite_with_the_repositorys_keys(
    lrepo: S3Repo, tmp_path: Path
) -> None:
    repo = _init(lrepo)
    assert isinstance(repo.storage, LockedS3Storage)
    data = disk_image(tmp_path / "d.img", [rand() for _ in range(24)] + [None])  # 6 MiB pack
    pid = import_disk(repo, "vm", 2000, tmp_path / "d.img", workers=0).point_id
    now = time.time()
    keys = {k: v for k, v in _versions(lrepo, "repo/")}
    pack = next(k for k in keys if k.startswith("repo/packs/"))
    assert lrepo.bucket.stat(pack).size > 5 * MiB  # a multipart upload
    for key, vid in keys.items():
        until = _until(lrepo, key, vid)
        if key.split("/")[1] in ("config", "keys", "packs", "index", "points"):
            assert until is not None and DAY - 120 < until - now <= DAY + 5, key
        else:
            assert until is None, key  # running markers, the gc lock: never locked
    vm = repo.get_point(pid).vm_uuid
    meta = f"repo/points/{vm}/{pid}/meta"
    dmap = f"repo/points/{vm}/{pid}/disk-2000.map"
    index = next(k for k in keys if k.startswith("repo/index/"))
    # the attacker: the repository's own credentials, straight to S3
    evil = make_client(lrepo.bucket.loc)
    b = lrepo.bucket.loc.bucket
    for key in (meta, pack, index):
        with pytest.raises(bx.ClientError) as exc:
            evil.delete_object(Bucket=b, Key=key, VersionId=keys[key])
        assert exc.value.response["Error"]["Code"] == "AccessDenied"
    res = evil.delete_objects(
        Bucket=b, Delete={"Objects": [{"Key": dmap, "VersionId": keys[dmap]}]}
    )
    assert [e["Code"] for e in res.get("Errors", [])] == ["AccessDenied"]
    evil.delete_object(Bucket=b, Key=pack)  # "succeeds": a delete marker on top
    evil.put_object(Bucket=b, Key=index, Body=b"overwritten")  # a new version on top
    # the maintenance sees it (it reads the versions, not only the current view)
    s3 = ["--repo", lrepo.url, "--s3-config", str(lrepo.config), "--cache-dir", str(lrepo.cache())]
    r = vmb("repo", "extend-retention", *s3, "--dry-run", "--json")
    doc = json.loads(r.stdout)
    assert r.returncode == 1 and doc["error"]["cause"] == "damage", r.stdout
    assert doc["result"]["hidden"] == [pack.removeprefix("repo/")]
    assert doc["result"]["overwritten"] == [index.removeprefix("repo/")]
    for key in (meta, dmap):
        evil.delete_object(Bucket=b, Key=key)
    with pytest.raises(RepositoryError):
        restore_disk(_open(lrepo, "c2"), pid, 2000, tmp_path / "lost.img")
    # packs and index come back always, a hidden point only when named (prune hides too)
    first = undelete(repo.storage, set())
    assert first.hidden_points == [f"{vm}/{pid}"]
    assert set(first.restored) == {k.removeprefix("repo/") for k in (pack, index)}
    r = vmb("repo", "undelete", *s3, "--point", pid, "--json")
    assert r.returncode == 0, r.stderr
    back = json.loads(r.stdout)["result"]
    assert set(back["restored"]) == {k.removeprefix("repo/") for k in (meta, dmap)}
    fresh = _open(lrepo, "c3")
    restore_disk(fresh, pid, 2000, tmp_path / "out.img")
    assert (tmp_path / "out.img").read_bytes() == data
    assert verify(fresh).problems == []
    rep = extend_retention(fresh, referenced_chunks(fresh))
    assert rep.hidden == rep.overwritten == [] and rep.extended == 0


def test_a_streamed_pack_is_locked_after_its_completion(lrepo: S3Repo, tmp_path: Path) -> None:
    """A pack sent as parts while it filled (s3_pack_stream.py) gets its retention from
    PutObjectRetention after CompleteMultipartUpload, as a multipart write does."""
    lrepo.config.write_text(lrepo.config.read_text() + "stream_part_mib = 5\n")
    repo = _init(lrepo, pack_size=32 * MiB)
    data = disk_image(tmp_path / "d.img", [rand() for _ in range(48)])  # 12 MiB: 3 parts
    pid = import_disk(repo, "vm", 2000, tmp_path / "d.img", workers=0).point_id
    now = time.time()
    assert isinstance(repo.storage, LockedS3Storage)
    assert repo.storage.parts_uploaded >= 3
    (pack,) = [k for k, _ in _versions(lrepo, "repo/packs/")]
    until = _until(lrepo, pack)
    assert until is not None and DAY - 120 < until - now <= DAY + 5
    fresh = _open(lrepo, "c2")
    restore_disk(fresh, pid, 2000, tmp_path / "out.img")
    assert (tmp_path / "out.img").read_bytes() == data


def test_prune_and_gc_keep_what_is_locked_and_free_it_after(lrepo: S3Repo, tmp_path: Path) -> None:
    repo = _init(lrepo, pack_size=1 * MiB)
    disk_image(tmp_path / "old.img", [rand() for _ in range(4)])
    new = disk_image(tmp_path / "new.img", [rand() for _ in range(4)])
    old_id = import_disk(repo, "vm", 2000, tmp_path / "old.img", snapshot_time=1e3, workers=0)
    old_keys = {kv for kv in _versions(lrepo, "repo/") if kv[0].split("/")[1] != "config"}
    new_id = import_disk(repo, "vm", 2000, tmp_path / "new.img", snapshot_time=2e3, workers=0)
    all_packs = {kv for kv in _versions(lrepo, "repo/packs/")}
    s3 = ["--s3-config", str(lrepo.config), "--cache-dir", str(lrepo.cache())]
    r = vmb("prune", "--repo", lrepo.url, *s3, "--keep-last", "1", "--json")
    assert r.returncode == 0, r.stderr
    locked = json.loads(r.stdout)["result"]["locked"]
    assert [x["point"] for x in locked] == [old_id.point_id]
    assert locked[0]["retain_until"] > datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    time.sleep(1.1)  # gc's grace 0: its cutoff is past every mtime
    r = vmb("gc", "--repo", lrepo.url, *s3, "--grace", "0", "--json")
    assert r.returncode == 0, r.stderr + r.stdout
    doc = json.loads(r.stdout)["result"]
    assert doc["packs_removed"] == 0 and doc["chunks_removed"] == 0
    kept = {k["object"] for k in doc["locked_kept"]}
    old_packs = {k.removeprefix("repo/") for k, _ in old_keys if "/packs/" in k}
    assert old_packs and old_packs <= kept  # neither dropped nor rewritten
    assert doc["locked_kept_total"] >= len(doc["locked_kept"])
    assert doc["retention"]["hidden"] == [] and doc["retention"]["extended"] == 0
    assert set(_versions(lrepo, "repo/packs/")) == all_packs
    # the lock passes (sooner: the bypass shortens GOVERNANCE), then gc frees it all
    ends = _shorten(lrepo, sorted(old_keys), 2.0)
    time.sleep(max(0.0, ends - time.time()) + 1.1)  # the gateway counts whole seconds
    fresh = _open(lrepo, "c2")
    report = gc(fresh, grace=0)
    assert report.packs_removed >= 1 and report.versions_purged >= 2
    assert not any(f"/{old_id.point_id}/" in k for k, _ in _versions(lrepo, "repo/points/"))
    restore_disk(fresh, new_id.point_id, 2000, tmp_path / "out.img")
    assert (tmp_path / "out.img").read_bytes() == new
    # maintenance: what a kept point needs is locked again before its lock runs out
    live = [kv for kv in _versions(lrepo, "repo/") if "/packs/" in kv[0]]
    _shorten(lrepo, live, 600.0)
    rep = extend_retention(fresh, referenced_chunks(fresh))  # all young: no HEAD needed
    assert rep.looked_up == rep.extended == 0 and rep.checked > len(live)
    rep = extend_retention(fresh, referenced_chunks(fresh), check_all=True)
    assert rep.extended == len(live) and rep.headroom_seconds is not None
    assert rep.headroom_seconds > DAY - 120
    assert metrics.REPO_LOCK_SOONEST._value.get() > time.time() + DAY - 120
    for key, vid in live:
        assert (_until(lrepo, key, vid) or 0) > time.time() + DAY - 120


def test_init_refuses_a_bucket_without_object_lock_and_a_versioned_one_without_lock(
    s3repo: S3Repo,
) -> None:
    s3 = ["--s3-config", str(s3repo.config), "--cache-dir", str(s3repo.cache())]
    r = vmb("repo", "init", s3repo.url, "--object-lock", "COMPLIANCE", *s3)
    assert r.returncode == 1
    bucket = s3repo.bucket.loc.bucket
    assert f"bucket {bucket}".encode() in r.stderr + r.stdout and b"Object Lock" in r.stderr
    assert list(s3repo.bucket.list("")) == []  # nothing written
    # versions without Object Lock: create and delete would not do what they say
    s3repo.bucket._client.put_bucket_versioning(
        Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    with pytest.raises(RepositoryError, match=f"bucket {bucket} .* keeps object versions"):
        Repository.init(s3repo.url, s3_config=s3repo.config, cache_dir=s3repo.cache())
    assert list(s3repo.bucket.list("")) == []


def test_create_on_a_versioned_bucket_has_one_winner(lrepo: S3Repo) -> None:
    """RGW ignores If-None-Match on a versioned bucket: the oldest version wins, even
    when it shows in the listing after a younger rival's (seen: two winners in CI)."""
    storage = LockedS3Storage(lrepo.bucket.loc, POLICY)
    for round_ in range(4):
        wins: list[bytes] = []

        def one(body: bytes, wins: list[bytes] = wins) -> None:
            if storage.create("locks/gc", [body]):
                wins.append(body)

        threads = [threading.Thread(target=one, args=(b"%d" % i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(wins) == 1, f"round {round_}: winners {wins}"
        assert storage.read("locks/gc") == wins[0]
        assert not storage.create("locks/gc", [b"late"])
        storage.delete("locks/gc")
        assert storage.versions("locks/gc") == []  # every version gone, no marker left


def test_the_config_keeps_a_valid_lock_only(tmp_path: Path) -> None:
    doc = repo_config.new(CHUNK, 3, False, 6 * MiB)
    doc["object_lock"] = POLICY.as_config()
    parsed = repo_config.parse(repo_config.encode(doc, None), "config")
    assert LockPolicy.of_config(parsed) == POLICY
    short = {"mode": "COMPLIANCE", "period_seconds": 60}
    for bad in ({"mode": "LEGAL", "period_seconds": DAY}, short):
        with pytest.raises(repo_config.ConfigFieldError, match="object_lock"):
            repo_config.encode(doc | {"object_lock": bad}, None)
    v2 = repo_config.new(CHUNK, 3, False) | {"object_lock": POLICY.as_config()}
    with pytest.raises(repo_config.ConfigFieldError, match="unknown key"):
        repo_config.encode(v2, None)
    with pytest.raises(InvalidRequestError, match="Object Lock is for a repository on S3"):
        Repository.init(tmp_path / "local", object_lock=POLICY)
    assert not (tmp_path / "local").exists()


def test_compliance_holds_against_the_repositorys_keys_even_with_the_bypass(
    lrepo: S3Repo,
) -> None:
    """What docs/object-storage.md says these keys cannot do (GOVERNANCE they can bypass:
    the fixture's cleanup does). A lock of 3 s: a COMPLIANCE day could not be cleaned up."""
    c, b = make_client(lrepo.bucket.loc), lrepo.bucket.loc.bucket
    until = datetime.now(UTC) + timedelta(seconds=3)
    vid = c.put_object(
        Bucket=b, Key="c", Body=b"x", ObjectLockMode="COMPLIANCE", ObjectLockRetainUntilDate=until
    )["VersionId"]
    with pytest.raises(bx.ClientError, match="AccessDenied"):
        c.delete_object(Bucket=b, Key="c", VersionId=vid, BypassGovernanceRetention=True)
    with pytest.raises(bx.ClientError, match="AccessDenied"):
        c.put_object_retention(
            Bucket=b,
            Key="c",
            VersionId=vid,
            Retention={"Mode": "COMPLIANCE", "RetainUntilDate": until - timedelta(seconds=2)},
        )
    while datetime.now(UTC) <= until + timedelta(seconds=0.5):
        time.sleep(0.2)
    c.delete_object(Bucket=b, Key="c", VersionId=vid)  # once passed, it goes
