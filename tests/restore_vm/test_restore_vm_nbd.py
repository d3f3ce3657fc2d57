"""restore-vm --transport nbd: only the chunks with data travel, into the new VM's disk
through nbdkit (its file plugin on the lab's datastore, as `proxy.nbd.server = "file"`
configures), and the restored disks stay thin."""

from __future__ import annotations

import json
import os
from pathlib import Path

from lab.guest import write_at
from tests.restore_vm.conftest import CHUNK, Env, flat_of, same_bytes
from tests.restore_vm.lab_point import LabPoint, back_up, create_simple_vm

MiB = 2**20


def _disk_file(env: Env, vm: object) -> str:
    dev = env.conn.get_properties(vm, ["config.hardware.device"])["config.hardware.device"]
    return str(next(d.backing.fileName for d in dev if hasattr(d, "capacityInBytes")))


def _backed_up(
    env: Env, name: str, size: int, writes: list[tuple[int, int]]
) -> tuple[Path, LabPoint]:
    """A new VM with one disk of ``size`` holding random bytes at (offset, length) of
    ``writes`` and holes elsewhere, backed up: (its flat file, the point)."""
    vm = create_simple_vm(env.conn, name, env.shared_ds, size)
    src = flat_of(env, _disk_file(env, vm))
    for off, n in writes:
        write_at(src, size, off, os.urandom(n))
    return src, back_up(env.conn, env.lab, env.repo, vm)


def test_nbd_restore_sends_only_data_and_keeps_the_disk_thin(env: Env) -> None:
    size = 24 * MiB + 512  # ends mid-chunk
    data_at = [0, 5 * MiB + 4096, 17 * MiB, size - 512]  # 4 chunks with data, the rest holes
    src, point = _backed_up(env, "sparse-src", size, [(o, min(3000, size - o)) for o in data_at])

    r = env.restore_vm(point.point_id, "sparse-nbd", "--transport", "nbd", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)["result"]
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
    [disk] = json.loads(r.stdout)["result"]["disks"]
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


def _nbdkit_that_fails(env: Env, tmp: Path, command: str, *, recovers: bool) -> Path:
    """A config whose nbdkit is a script running ``command``, whose nbdkit fails while the
    file ``{trigger}`` exists: on the first connection only (``recovers``: the second
    connection's start removes it) or on every one."""
    tmp.mkdir(exist_ok=True)
    trigger, started = tmp / "fail", tmp / "started"
    trigger.touch()
    heal = f'[ -e "{started}" ] && rm -f "{trigger}"\n' if recovers else ""
    script = tmp / "nbdkit-failing"
    script.write_text(f'#!/bin/sh\n{heal}touch "{started}"\n{command.format(trigger=trigger)}\n')
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


def _failing_writes(env: Env, tmp: Path, *, recovers: bool) -> Path:
    """nbdkit's error filter: a quarter of the writes fail with EIO (every write when it
    never ``recovers``)."""
    rate = "25%" if recovers else "100%"
    return _nbdkit_that_fails(
        env,
        tmp,
        f'exec nbdkit --filter=error "$@" error-pwrite=EIO error-pwrite-rate={rate} '
        'error-pwrite-file="{trigger}"',
        recovers=recovers,
    )


def test_failed_nbd_writes_resume_on_a_new_connection(env: Env, tmp_path: Path) -> None:
    size = 16 * MiB
    # 32 chunks with data, 32 holes
    src, point = _backed_up(
        env, "resume-src", size, [(o, CHUNK) for o in range(0, size, 2 * CHUNK)]
    )

    config = _failing_writes(env, tmp_path / "once", recovers=True)
    r = env.restore_vm(point.point_id, "resumed", "--transport", "nbd", "--json", config=config)
    assert r.returncode == 0, r.stderr
    [disk] = json.loads(r.stdout)["result"]["disks"]
    assert disk["attempts"] == 2
    assert "restore_vm_upload_retry" in r.stderr and "NBD write failed at byte" in r.stderr
    data = 32 * CHUNK
    # resumed at the first write not confirmed: at most the writes in flight go twice
    assert data <= disk["bytes_sent"] <= data + 4 * CHUNK
    assert same_bytes(flat_of(env, disk["file"]), src)

    config = _failing_writes(env, tmp_path / "never", recovers=False)
    r = env.restore_vm(
        point.point_id, "never-ok", "--transport", "nbd", "--upload-attempts", "2", config=config
    )
    assert r.returncode == 1, r.stdout
    assert "NBD write failed at byte" in r.stderr and "after 2 attempts" in r.stderr
    assert not env.vms_named("never-ok"), "a half-restored VM was left behind"


def _failing_flush(env: Env, tmp: Path, *, recovers: bool) -> Path:
    """The flat file through nbdkit's eval plugin (the file plugin's reads and writes, done
    by dd) with a flush that fails with EIO. nbdkit 1.32's error filter cannot fail a
    flush; the eval plugin can."""
    return _nbdkit_that_fails(
        env,
        tmp,
        "for flat; do :; done  # the file plugin's last argument: the flat file\n"
        "exec nbdkit -s --exit-with-parent eval \\\n"
        "  get_size=\"stat -Lc %s '$flat'\" \\\n"
        "  pread=\"dd if='$flat' skip=\\$4 count=\\$3 iflag=count_bytes,skip_bytes\" \\\n"
        "  pwrite=\"dd of='$flat' bs=64K seek=\\$4 conv=notrunc oflag=seek_bytes status=none\" \\\n"
        "  flush=\"if [ -e '{trigger}' ]; then echo 'EIO flush refused by the test' >&2; "
        "exit 1; fi; sync '$flat'\"",
        recovers=recovers,
    )


def test_a_failed_flush_writes_the_disk_again_from_its_first_byte(env: Env, tmp_path: Path) -> None:
    size = 4 * MiB
    # 4 chunks with data
    src, point = _backed_up(env, "flush-src", size, [(o, CHUNK) for o in range(0, size, 4 * CHUNK)])

    config = _failing_flush(env, tmp_path / "flush-once", recovers=True)
    r = env.restore_vm(point.point_id, "flushed", "--transport", "nbd", "--json", config=config)
    assert r.returncode == 0, r.stderr
    [disk] = json.loads(r.stdout)["result"]["disks"]
    assert disk["attempts"] == 2
    assert "NBD flush failed" in r.stderr and "from byte 0" in r.stderr
    # a write taken but not flushed may be lost: every data chunk went again
    assert disk["bytes_sent"] == 2 * 4 * CHUNK
    assert same_bytes(flat_of(env, disk["file"]), src)

    config = _failing_flush(env, tmp_path / "flush-never", recovers=False)
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
