"""`make demo`'s run on S3: the same pipeline into a repository on the lab's Ceph RGW.

After the demo's own runs (a local repository), on the same lab: starts the lab's real
Ceph RADOS Gateway (lab/ceph_rgw.py; reused when one already runs on its data directory),
makes a bucket, `repo init s3://BUCKET/demo`, starts two writers (repository.path =
s3://..., each with its own cache directory) and two proxies, backs up a few VMs (full,
then incremental after guest writes), restores every disk of both points from the bucket
and compares each byte, and verifies the repository on S3. The gateway is stopped
afterwards unless it ran before.

Skipped with VMBACKUP_DEMO_S3=0 (`make demo` without the S3 section: a machine without
the Ceph packages, scripts/setup-system.sh). VMBACKUP_DEMO_RGW_DIR says where the
gateway's data directory is (default: the lab's, /tmp/vmbackup-rgw).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from lab import Lab, ceph_rgw
from lab.checks import disk_digests
from lab.stack import Stack, StackError, StackSpec
from repository.s3_config import load_s3_config
from repository.s3_repo_storage import S3RepoStorage

ENV_SWITCH = "VMBACKUP_DEMO_S3"
ENV_RGW_DIR = "VMBACKUP_DEMO_RGW_DIR"
VMS = 4  # backed up to S3: the gateway's memstore keeps every object in RAM
POLICY = "s3"


def wanted() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "no", "off", "false")


def s3_config_file(work: Path, info: ceph_rgw.RgwInfo, *, tls: bool = False) -> Path:
    """The S3 config of the lab's gateway; ``tls``: its https endpoint, checked against
    the gateway's own CA."""
    path = work / "s3.toml"
    endpoint = info.tls_endpoint if tls else info.endpoint
    path.write_text(
        f'endpoint = "{endpoint}"\n'
        + (f'ca_file = "{info.ca_file}"\n' if tls else "")
        + f'region = "{info.region}"\n'
        f'credentials_file = "{info.credentials_file}"\n',
        encoding="utf-8",
    )
    return path


def empty_repository(storage: S3RepoStorage) -> None:
    """Every object of the repository deleted: the demo leaves an empty bucket."""
    names = [o.name for o in storage.list("")]
    for top in sorted({n.split("/", 1)[0] for n in names if "/" in n}):
        storage.delete_all(top)
    for name in names:
        if "/" not in name:
            storage.delete(name)


def run_s3_section(lab: Lab, work: Path, rows: list[list[str]]) -> list[str]:
    """The S3 run: its summary rows appended to ``rows``; the failures it found."""
    if not wanted():
        print(f"on S3: skipped ({ENV_SWITCH}=0)")
        return []
    from lab import demo  # the demo's own steps (lab/demo.py imports this module)

    data_dir = Path(os.environ.get(ENV_RGW_DIR) or ceph_rgw.DEFAULT_DIR)
    print(f"on S3: the lab's Ceph RGW on {data_dir} (bootstrapped on first use, ~15 s)")
    try:
        info = ceph_rgw.start(data_dir)
    except Exception as exc:  # no Ceph packages, a port taken: said, and a failure
        return [f"on S3: the lab's RGW did not start: {exc} (skip with {ENV_SWITCH}=0)"]
    failures: list[str] = []
    try:
        work = work / "s3"
        work.mkdir(parents=True, exist_ok=True)
        bucket = f"demo-{uuid.uuid4().hex[:12]}"
        config = s3_config_file(work, info)
        S3RepoStorage(load_s3_config(config, f"s3://{bucket}")).create_bucket()
        url = f"s3://{bucket}/demo"
        names = sorted(vm["name"] for vm in lab.vms())[:VMS]
        spec = StackSpec(
            s3_url=url,
            s3_config=config,
            # a commit waits for the other writer's open packs: uploaded once idle 2 s
            env={"VMBACKUP_WRITER__PACK_IDLE_SEAL": "2"},
            extra_config=f'\n[[policies]]\nname = "{POLICY}"\nnames = {json.dumps(names)}\n',
        )
        print(f"  {info.endpoint} bucket {bucket}: {url}, {len(names)} VMs: {', '.join(names)}")
        with Stack(lab, work, spec) as stack:
            expected_full = disk_digests(lab)
            full, progress = demo.run_backup(stack, "full on S3", POLICY)
            rows.append(demo.summary_row("full on S3", full, progress))
            if full.returncode != 0:
                failures.append(f"on S3: full backup exited {full.returncode}")
            demo.write_guest_changes(lab, 99, 0.01)
            expected_incr = disk_digests(lab)
            incr, progress = demo.run_backup(stack, "incremental on S3", POLICY)
            rows.append(demo.summary_row("incremental on S3", incr, progress))
            if incr.returncode != 0:
                failures.append(f"on S3: incremental backup exited {incr.returncode}")
            repo_objects = S3RepoStorage(load_s3_config(config, url))
            print(f"  the repository is {sum(1 for _ in repo_objects.list(''))} objects")
            failures += demo.restore_and_compare(stack, incr, expected_incr, "newest on S3")
            failures += demo.restore_and_compare(stack, full, expected_full, "older on S3")
            try:
                print("  verify: " + stack.verify().strip()[-300:])
            except StackError as exc:
                failures.append(f"on S3: verify found damage: {exc}")
            empty_repository(repo_objects)
    except Exception as exc:
        failures.append(f"on S3: {type(exc).__name__}: {exc}")
    finally:
        if not info.reused:  # one that ran before the demo is the developer's
            ceph_rgw.stop(data_dir)
    return failures
