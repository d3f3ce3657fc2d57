"""Measured child processes and the restic / borg commands of the end-to-end benchmark.

A run's wall time, CPU time and bytes read (``rchar`` of /proc/PID/io: every byte the
process got from read(), page cache or not) are taken from the process itself: it is
waited for with WNOWAIT, so its /proc entry can be read before it is reaped.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20


@dataclass
class Measured:
    wall: float
    cpu: float
    rchar: int
    load_before: float
    load_after: float
    output: str


def load1() -> float:
    return os.getloadavg()[0]


def run(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> Measured:
    """Run ``cmd`` to completion; fail loudly (with its stderr tail) on a non-zero exit."""
    la = load1()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        env=env,
        cwd=cwd or ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    out = proc.stdout.read()  # until EOF: the process has (nearly) ended
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    wall = time.perf_counter() - t0
    rchar = proc_io(proc.pid).get("rchar", 0)
    rc = proc.wait()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    text = out.decode(errors="replace")
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {rc}: {text.strip()[-2000:]}")
    cpu = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
    return Measured(wall, cpu, rchar, la, load1(), text)


def proc_io(pid: int) -> dict[str, int]:
    try:
        text = Path(f"/proc/{pid}/io").read_text()
    except OSError:
        return {}
    return {k: int(v) for k, v in (line.split(": ") for line in text.splitlines())}


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a live process (and its reaped children)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # fields[11..14] = utime stime cutime cstime (stat fields 14-17), in clock ticks
    ticks = sum(int(x) for x in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def proc_sys_cpu(pid: int) -> float:
    """System (kernel) CPU seconds of a live process (and its reaped children)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[12]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")  # stime, cstime


def dir_size(path: Path) -> tuple[int, int]:
    """(sum of file sizes, bytes allocated on disk as du counts them)."""
    size = used = 0
    for p in path.rglob("*"):
        if p.is_file():
            st = p.stat()
            size += st.st_size
            used += st.st_blocks * 512
    return size, used


@dataclass
class Tool:
    """One competitor: how to init, back up the flat files, and restore one of them."""

    name: str
    repo: Path
    env: dict[str, str]

    def init(self) -> None:
        raise NotImplementedError

    def backup_cmd(self, files: list[Path], label: str) -> list[str]:
        raise NotImplementedError

    def backup(self, files: list[Path], label: str) -> Measured:
        return run(self.backup_cmd(files, label), self.env)

    def cleanup(self) -> None:
        shutil.rmtree(self.repo.parent, ignore_errors=True)


class Restic(Tool):
    """restic 0.14: repository v2, compression auto (zstd), encrypted (fixed passphrase)."""

    def init(self) -> None:
        run(["restic", "-r", str(self.repo), "init", "-q"], self.env)

    def backup_cmd(self, files: list[Path], label: str) -> list[str]:
        # Unchanged files are skipped by mtime/ctime/inode against the parent snapshot
        # (chosen automatically: same host and paths), changed ones are read whole.
        return ["restic", "-r", str(self.repo), "backup", "-q", "--tag", label, *map(str, files)]

    def restore(self, file: Path, target: Path) -> Measured:
        return run(
            [
                "restic",
                "-r",
                str(self.repo),
                "restore",
                "latest",
                "--target",
                str(target),
                "--include",
                str(file),
            ],
            self.env,
        )


class Borg(Tool):
    """borg 1.2, no encryption; ``compression`` lz4 (its default) or e.g. "zstd,3";
    ``chunker`` e.g. "fixed,1048576"."""

    chunker: str = ""
    compression: str = "lz4"

    def init(self) -> None:
        run(["borg", "init", "--encryption=none", str(self.repo)], self.env)

    def backup_cmd(self, files: list[Path], label: str) -> list[str]:
        extra = ["--chunker-params", self.chunker, "--sparse"] if self.chunker else []
        return [
            "borg",
            "create",
            "--compression",
            self.compression,
            *extra,
            f"{self.repo}::{label}",
            *map(str, files),
        ]


# What the product image installs (pyproject's packages) plus the lab the stack runs.
PACKAGES = ("common", "coordinator", "export", "file_restore", "proxy_worker", "repository",
            "repository_writer", "vmbackup", "lab")  # fmt: skip


def bytecode_env(work: Path) -> dict[str, str]:
    """The environment that has the stack's processes load compiled bytecode from
    ``work``/pycache, filled here first. The product image ships bytecode (Dockerfile:
    compileall) as borg's package does; with PYTHONDONTWRITEBYTECODE set and no
    __pycache__ in a worktree, every ``vmbackup backup`` would compile ~240 modules from
    source first (0.2-0.3 CPU s of each coordinator run). A prefix is looked in for every
    module, stdlib's too: importing all of the tree's modules once here writes the
    bytecode of what they import; what a process imports later it writes there itself."""
    prefix = work / "pycache"
    extra = {"PYTHONPYCACHEPREFIX": str(prefix), "PYTHONDONTWRITEBYTECODE": ""}
    res = subprocess.run(
        [sys.executable, "-c", _WARM, *PACKAGES],
        env={**os.environ, **extra, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        raise RuntimeError(f"bytecode into {prefix} exited {res.returncode}: {res.stderr[-2000:]}")
    return extra


# Import every module of the packages named (bytecode written as a side effect).
_WARM = """
import importlib, pkgutil, sys
for name in sys.argv[1:]:
    pkg = importlib.import_module(name)
    for m in pkgutil.walk_packages(pkg.__path__, name + "."):
        if m.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(m.name)
        except Exception:
            pass
"""


def make_tools(work: Path, names: list[str]) -> list[Tool]:
    tools: list[Tool] = []
    for name in names:
        d = work / name
        d.mkdir(parents=True, exist_ok=True)
        if name == "restic":
            env = {
                **os.environ,
                "RESTIC_PASSWORD": "bench",
                "RESTIC_CACHE_DIR": str(d / "cache"),
            }
            tools.append(Restic(name, d / "repo", env))
        elif name.startswith("borg"):
            env = {
                **os.environ,
                "BORG_BASE_DIR": str(d / "home"),
                "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
                "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
            }
            tools.append(borg_tool(name, d / "repo", env))
        else:
            raise ValueError(f"unknown tool {name!r} (restic, borg, borg-fixed{TOOL_HELP})")
    return tools


TOOL_HELP = "; borg and borg-fixed take a suffix -zstdN for zstd level N instead of lz4"
BORG_NAME = re.compile(r"borg(?P<fixed>-fixed)?(?:-zstd(?P<level>[0-9]+))?")


def borg_tool(name: str, repo: Path, env: dict[str, str]) -> Borg:
    """``borg``, ``borg-fixed`` (fixed 1 MiB chunks), either with ``-zstdN`` (zstd level
    N, 1..22, instead of borg's default lz4): e.g. ``borg-fixed-zstd3``."""
    m = BORG_NAME.fullmatch(name)
    level = int(m["level"]) if m and m["level"] else None
    if m is None or (level is not None and not 1 <= level <= 22):
        raise ValueError(f"unknown tool {name!r} (borg, borg-fixed{TOOL_HELP}, N in 1..22)")
    b = Borg(name, repo, env)
    if m["fixed"]:
        b.chunker = "fixed,1048576"
    if level is not None:
        b.compression = f"zstd,{level}"
    return b


def broker_pid() -> int | None:
    """The RabbitMQ node's pid (its CPU also serves other helpers' tests: shown apart)."""
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmd and cmd[0].endswith(b"beam.smp") and b"rabbit" in cmd and b"boot" in cmd:
                return int(d.name)
    return None
