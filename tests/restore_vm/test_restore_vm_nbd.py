"""restore-vm --transport nbd: only the chunks with data travel, into the new VM's disk
through nbdkit (its file plugin on the lab's datastore, as `proxy.nbd.server = "file"`
configures), and the restored disks stay thin."""

from __future__ import annotations

import json
import os
from pathlib import Path

from lab.guest import write_at
from tests.restore_vm.conftest import CHUNK, Env, flat_of, same_bytes
from tests.restore_vm.lab_point import back_up, create_simple_vm

MiB = 2**20


def _disk_file(env: Env, vm: object) -> str:
    dev = env.conn.get_properties(vm, ["config.hardware.device"])["config.hardware.device"]
    return str(next(d.backing.fileName for d in dev if hasattr(d, "capacityInBytes")))


def test_nbd_restore_sends_only_data_and_keeps_the_disk_thin(env: Env) -> None:
    size = 24 * MiB + 512  # ends mid-chunk
    vm = create_simple_vm(env.conn, "sparse-src", env.shared_ds, size)
    src = flat_of(env, _disk_file(env, vm))
    data_at = [0, 5 * MiB + 4096, 17 * MiB, size - 512]  # 4 chunks with data, the rest holes
    for off in data_at:
        write_at(src, size, off, os.urandom(min(3000, size - off)))
    point = back_up(env.conn, env.lab, env.repo, vm)

    r = env.restore_vm(point.point_id, "sparse-nbd", "--transport", "nbd", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    [disk] = res["disks"]
    # the data chunks, the last one cut at the end of the disk; nothing else travelled
    assert disk["bytes_sent"] == 3 * CHUNK + (size % CHUNK) == res["bytes_uploaded"]
    [new] = env.vms_named("sparse-nbd")
    assert new.runtime.powerState == "poweredOff"
    restored = flat_of(env, disk["file"])
    assert same_bytes(restored, src), "the restored disk differs from the backed-up one"
    assert os.stat(restored).st_blocks * 512 <= 4 * CHUNK + MiB, "the holes were written"

    # the same point over /folder: every byte travels (the reason for the nbd transport)
    r = env.restore_vm(point.point_id, "sparse-http", "--json")
    assert r.returncode == 0, r.stderr
    [disk] = json.loads(r.stdout)["disks"]
    assert disk["bytes_sent"] == size
    assert same_bytes(flat_of(env, disk["file"]), src)


def test_nbd_restore_fails_cleanly_without_a_datastore_mount(env: Env) -> None:
    config = env.tmp / "nomount.toml"
    text = env.config.read_text()
    start = text.index("datastore_mounts")
    config.write_text(text[:start] + "datastore_mounts = {}" + text[text.index("\n", start) :])
    r = env.restore_vm(env.plain.point_id, "nbd-nomount", "--transport", "nbd", config=config)
    assert r.returncode == 1, r.stdout
    assert "over NBD" in r.stderr and "datastore_mounts" in r.stderr
    assert not env.vms_named("nbd-nomount"), "a half-restored VM was left behind"


def _failing_nbdkit(env: Env, tmp: Path, *, recovers: bool) -> Path:
    """A config whose nbdkit runs nbdkit's error filter: a quarter of the writes fail with
    EIO on the first connection and none from the second one on (``recovers``), or every
    write fails on every connection. (Debian's nbdkit 1.32 cannot fail a flush.)"""
    tmp.mkdir(exist_ok=True)
    trigger, started = tmp / "writes-fail", tmp / "started"
    trigger.touch()
    script = tmp / "nbdkit-failing"
    heal = f'[ -e "{started}" ] && rm -f "{trigger}"\n' if recovers else ""
    rate = "25%" if recovers else "100%"
    script.write_text(
        "#!/bin/sh\n"
        f"{heal}"
        f'touch "{started}"\n'
        f'exec nbdkit --filter=error "$@" error-pwrite=EIO error-pwrite-rate={rate} '
        f'error-pwrite-file="{trigger}"\n'
    )
    script.chmod(0o755)
    config = tmp / "failing-nbd.toml"
    text = env.config.read_text()
    assert '[proxy.nbd]\nserver = "file"' in text
    config.write_text(
        text.replace(
            '[proxy.nbd]\nserver = "file"', f'[proxy.nbd]\nserver = "file"\nnbdkit = "{script}"'
        )
    )
    return config


def test_failed_nbd_writes_resume_on_a_new_connection(env: Env, tmp_path: Path) -> None:
    size = 16 * MiB
    vm = create_simple_vm(env.conn, "resume-src", env.shared_ds, size)
    src = flat_of(env, _disk_file(env, vm))
    for off in range(0, size, 2 * CHUNK):  # 32 chunks with data, 32 holes
        write_at(src, size, off, os.urandom(CHUNK))
    point = back_up(env.conn, env.lab, env.repo, vm)

    config = _failing_nbdkit(env, tmp_path, recovers=True)
    r = env.restore_vm(point.point_id, "resumed", "--transport", "nbd", "--json", config=config)
    assert r.returncode == 0, r.stderr
    [disk] = json.loads(r.stdout)["disks"]
    assert disk["attempts"] == 2
    assert "restore_vm_upload_retry" in r.stderr and "NBD write failed at byte" in r.stderr
    data = 32 * CHUNK
    # resumed at the first write not confirmed: at most the writes in flight go twice
    assert data <= disk["bytes_sent"] <= data + 4 * CHUNK
    assert same_bytes(flat_of(env, disk["file"]), src)

    config = _failing_nbdkit(env, tmp_path / "never", recovers=False)
    r = env.restore_vm(
        point.point_id, "never-ok", "--transport", "nbd", "--upload-attempts", "2", config=config
    )
    assert r.returncode == 1, r.stdout
    assert "NBD write failed at byte" in r.stderr and "after 2 attempts" in r.stderr
    assert not env.vms_named("never-ok"), "a half-restored VM was left behind"


def _nbdkit_failing_flush(tmp: Path, env: Env, *, recovers: bool) -> Path:
    """A config whose nbdkit serves the flat file through nbdkit's eval plugin (the file
    plugin's reads and writes, done by dd) with a flush that fails with EIO: on the first
    connection only (``recovers``) or on every one. nbdkit 1.32's error filter cannot fail
    a flush; the eval plugin can."""
    tmp.mkdir(exist_ok=True)
    trigger, started = tmp / "flush-fails", tmp / "started"
    trigger.touch()
    heal = f'[ -e "{started}" ] && rm -f "{trigger}"\n' if recovers else ""
    script = tmp / "nbdkit-flush-fails"
    script.write_text(
        "#!/bin/sh\n"
        f"{heal}"
        f'touch "{started}"\n'
        "for flat; do :; done  # the file plugin's last argument: the flat file\n"
        "exec nbdkit -s --exit-with-parent eval \\\n"
        "  get_size=\"stat -Lc %s '$flat'\" \\\n"
        "  pread=\"dd if='$flat' skip=\\$4 count=\\$3 iflag=count_bytes,skip_bytes\" \\\n"
        "  pwrite=\"dd of='$flat' bs=64K seek=\\$4 conv=notrunc oflag=seek_bytes status=none\" \\\n"
        f"  flush=\"if [ -e '{trigger}' ]; then echo 'EIO flush refused by the test' >&2; "
        "exit 1; fi; sync '$flat'\"\n"
    )
    script.chmod(0o755)
    config = tmp / "flush-fails.toml"
    text = env.config.read_text()
    config.write_text(
        text.replace(
            '[proxy.nbd]\nserver = "file"', f'[proxy.nbd]\nserver = "file"\nnbdkit = "{script}"'
        )
    )
    return config


def test_a_failed_flush_writes_the_disk_again_from_its_first_byte(env: Env, tmp_path: Path) -> None:
    size = 4 * MiB
    vm = create_simple_vm(env.conn, "flush-src", env.shared_ds, size)
    src = flat_of(env, _disk_file(env, vm))
    for off in range(0, size, 4 * CHUNK):  # 4 chunks with data
        write_at(src, size, off, os.urandom(CHUNK))
    point = back_up(env.conn, env.lab, env.repo, vm)

    config = _nbdkit_failing_flush(tmp_path / "once", env, recovers=True)
    r = env.restore_vm(point.point_id, "flushed", "--transport", "nbd", "--json", config=config)
    assert r.returncode == 0, r.stderr
    [disk] = json.loads(r.stdout)["disks"]
    assert disk["attempts"] == 2
    assert "NBD flush failed" in r.stderr and "from byte 0" in r.stderr
    # a write taken but not flushed may be lost: every data chunk went again
    assert disk["bytes_sent"] == 2 * 4 * CHUNK
    assert same_bytes(flat_of(env, disk["file"]), src)

    config = _nbdkit_failing_flush(tmp_path / "never", env, recovers=False)
    r = env.restore_vm(
        point.point_id,
        "never-flushed",
        "--transport",
        "nbd",
        "--upload-attempts",
        "2",
        config=config,
    )
    assert r.returncode == 1, r.stdout
    assert "NBD flush failed" in r.stderr and "after 2 attempts" in r.stderr
    assert not env.vms_named("never-flushed"), "a half-restored VM was left behind"
