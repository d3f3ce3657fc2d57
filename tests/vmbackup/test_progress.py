"""The progress display: rich bars on a terminal (a real pty), a few plain lines
elsewhere, nothing under --json; and the backup job's progress from its events."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

from coordinator.job_progress import JobProgress
from tests.vmbackup.conftest import ROOT, Imported, vmb
from vmbackup.progress import LineBoard, progress_board

PROGRESS_LINE = re.compile(r"^vmbackup: restore disk 2000: .* of 2\.0 MiB \((\d+)%\)", re.M)


def test_lines_at_each_tenth_then_the_end() -> None:
    out = io.StringIO()
    board = LineBoard(out, "vmbackup")
    step = board.task("copy")
    for done in range(0, 101):
        step(done, 100)
    items = board.task("points", "items")
    items(3, 0)  # total not known yet: a line for the first call, then only at the end
    items(4, 0)
    board.close()
    lines = out.getvalue().splitlines()
    copy = [x for x in lines if x.startswith("vmbackup: copy: ")]
    assert [x.split("(")[1].split("%")[0] for x in copy] == [str(p) for p in range(0, 101, 10)]
    assert copy[-1].startswith("vmbackup: copy: 100 B of 100 B (100%)")
    assert [x for x in lines if "points" in x][-1].startswith("vmbackup: points: 4")
    assert len(lines) == 13


def test_json_is_quiet() -> None:
    out = io.StringIO()
    with progress_board(quiet=True, stream=out) as board:
        board.task("copy")(50, 100)
        board.note("a VM finished")
    assert out.getvalue() == ""


def test_restore_not_on_a_terminal_prints_lines(imported: Imported, tmp_path: Path) -> None:
    args = ("--repo", imported.repo, "--point", imported.point, "--disk", "2000")
    r = vmb("restore", *args, "--out", str(tmp_path / "a.img"))
    assert r.returncode == 0, r.stderr
    pcts = [int(p) for p in PROGRESS_LINE.findall(r.stderr)]
    assert pcts[-1] == 100 and pcts == sorted(pcts) and len(pcts) <= 11, r.stderr
    assert "\r" not in r.stderr and "\x1b[" not in r.stderr  # lines, never a redrawn bar
    r = vmb("restore", *args, "--out", str(tmp_path / "b.img"), "--json")
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_verify_and_prune_show_progress(imported: Imported) -> None:
    r = vmb("verify", "--repo", imported.repo)
    assert r.returncode == 0, r.stderr
    last = [x for x in r.stderr.splitlines() if x.startswith("vmbackup: verify chunks read: ")]
    assert last and "(100%)" in last[-1], r.stderr
    r = vmb("repo", "import-disk", "--repo", imported.repo, "--vm", "web", "--disk", "2000",
            str(imported.image))  # fmt: skip
    r = vmb("prune", "--repo", imported.repo, "--keep-last", "1")
    assert r.returncode == 0, r.stderr
    assert "vmbackup: prune points removed: 1 of 1 (100%)" in r.stderr, r.stderr


def test_restore_on_a_terminal_draws_rich_bars(imported: Imported, tmp_path: Path) -> None:
    """stderr on a real pty: bars with bytes, rate and ETA; stdout (a pipe) only the result."""
    master, slave = pty.openpty()
    out = tmp_path / "c.img"
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmbackup", "restore", "--repo", imported.repo, "--point",
         imported.point, "--disk", "2000", "--out", str(out)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, cwd=ROOT, env=env,
    )  # fmt: skip
    os.close(slave)
    seen = b""
    while True:  # until the child closes the pty (read fails with EIO on Linux)
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        seen += data
    os.close(master)
    stdout = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 0, seen.decode(errors="replace")
    screen = seen.decode(errors="replace")
    assert "restore disk 2000" in screen and "━" in screen, screen  # a rich bar
    assert "2.0 MiB of 2.0 MiB (100%)" in screen and "ETA" in screen, screen
    assert stdout.startswith("restored disk 2000") and "\x1b" not in stdout
    assert out.read_bytes() == imported.data


def test_a_backup_job_progress_follows_its_events() -> None:
    vms: list[tuple[int, int]] = []
    data: list[tuple[int, int]] = []
    notes: list[str] = []
    jp = JobProgress(
        lambda d, t: vms.append((d, t)), lambda d, t: data.append((d, t)), notes.append
    )
    jp.event("job-planned", "", {"vms": 2})
    jp.event("disk-planned", "a", {"bytes_planned": 300})
    jp.event("disk-planned", "b", {"bytes_planned": 100})
    jp.event("task-done", "a", {"bytes": 300, "bytes_read": 200})
    jp.event("vm-done", "a", {"status": "ok", "mode": "full", "bytes_read": 200, "seconds": 2})
    jp.event("task-done", "b", {"bytes": 100})
    jp.event("vm-done", "b", {"status": "failed", "bytes_read": 0, "seconds": 1})
    assert vms == [(0, 2), (1, 2), (2, 2)]
    assert data == [(0, 300), (0, 400), (300, 400), (400, 400)]
    assert notes == ["VM a: ok, full, 200 B read in 2.0 s", "VM b: failed, -, 0 B read in 1.0 s"]
