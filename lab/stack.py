"""The whole distributed pipeline as separate processes, pointed at a running lab.

Used by ``make demo``, the end-to-end fault tests and the end-to-end benchmarks: it
writes one config file, starts writers and proxies (``vmbackup writer`` /
``vmbackup proxy``), runs coordinator jobs (``vmbackup backup``), and can kill or
restart any process in the middle of a job. Every process is a real ``vmbackup``
command with its own /metrics port; each role instance gets its name, shard set and
port through ``VMBACKUP_`` environment overrides of the one shared config.

The config it writes is lab/stack_config.py's; the per-role broker accounts are
lab/broker_accounts.py's.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from lab.broker_accounts import Account, create_accounts, delete_accounts
from lab.process import Lab
from lab.stack_config import StackSpec, config_text, shard_sets, toml_str

ROOT = Path(__file__).resolve().parents[1]
BROKER_URL = os.environ.get("VMBACKUP_TEST_BROKER", "amqp://guest@127.0.0.1:5672/%2F")


class StackError(RuntimeError):
    """A process of the stack did not start or a job could not be run."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rabbitmqctl(*args: str, timeout: float = 120) -> str:
    res = subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if res.returncode != 0:
        raise StackError(f"rabbitmqctl {' '.join(args)}: {res.stderr.strip()}")
    return res.stdout


@dataclass
class Proc:
    role: str
    index: int
    name: str
    metrics_port: int
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    log_file: IO[bytes] | None = None

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


@dataclass
class BackupRun:
    returncode: int
    report: dict[str, Any]
    seconds: float
    log_path: Path


class Stack:
    """Writers, proxies and coordinator runs against ``lab`` in a private vhost."""

    def __init__(self, lab: Lab, workdir: Path, spec: StackSpec | None = None) -> None:
        self.lab = lab
        self.spec = spec or StackSpec()
        self.workdir = Path(workdir)
        self.repo = self.workdir / "repo"
        self.config_path = self.workdir / "vmbackup.toml"
        self.logs = self.workdir / "logs"
        self.reports = self.workdir / "reports"
        self.vhost = self.spec.vhost or f"vmbackup-stack-{uuid.uuid4().hex[:8]}"
        self.broker_url = BROKER_URL.rsplit("/", 1)[0] + "/" + self.vhost
        self.procs: dict[str, Proc] = {}
        self.passphrase_file = self.workdir / "repo-passphrase"
        self.id_key_file = self.workdir / "repo-id-key"
        self.hosts = sorted({vm["host"] for vm in lab.vms()})
        self._runs = 0
        self._jobs: list[subprocess.Popen[bytes]] = []  # coordinator runs, stopped by stop()
        # One broker account per role (lab/broker_accounts.py), made by start().
        self.accounts: dict[str, Account] = {}

    # ---- set-up ----------------------------------------------------------------------
    def start(self) -> Stack:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.reports.mkdir(parents=True, exist_ok=True)
        if self.spec.vhost is None:
            rabbitmqctl("add_vhost", self.vhost)
            rabbitmqctl("set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")
        self.accounts = create_accounts(rabbitmqctl, self.vhost, self.workdir)
        # Users outlive their vhost: gone at exit even when nobody calls stop().
        atexit.register(self._drop_accounts)
        init = ["repo", "init", *self.repo_args()[1:], "--chunk-size", str(self.spec.chunk_size)]
        init += ["--compression-level", str(self.spec.compression_level)]
        if self.spec.chunk_files:
            init.append("--chunk-files")
        elif self.spec.pack_size is not None:
            init += ["--pack-size", str(self.spec.pack_size)]
        if self.spec.encrypt:
            self.passphrase_file.write_text(uuid.uuid4().hex)
            self.passphrase_file.chmod(0o600)
            init += ["--encrypt", "--passphrase-file", str(self.passphrase_file)]
        self._vmbackup(*init)
        if self.spec.encrypt:
            key = self._vmbackup("repo", "id-key", *self.repo_args()).strip()
            self.id_key_file.write_text(key)
            self.id_key_file.chmod(0o600)
        self.write_config()
        for i in range(self.spec.writers):
            self.start_proc("writer", i)
        for i in range(self.spec.proxies):
            self.start_proc("proxy", i)
        for p in list(self.procs.values()):
            self.wait_ready(p)
        return self

    def write_config(
        self,
        path: Path | None = None,
        *,
        repo: Path | None = None,
        password: str | None = None,
        **vcenter: str | float | int,
    ) -> Path:
        """The stack's config (at ``path``, default ``config_path``). ``repo``, ``password``
        and ``vcenter`` keys (url, timeout_s, retries...) override or add to the lab's
        values, for configs that point somewhere else (error tests)."""
        path = path or self.config_path
        pw = self.workdir / "vcenter-password" if password is None else path.with_suffix(".pw")
        pw.write_text(self.lab.password if password is None else password)
        pw.chmod(0o600)
        coord = self.accounts.get("coordinator")
        text = config_text(
            self.spec,
            self.lab,
            broker_url=self.broker_url,
            repo=repo or self.repo,
            reports=self.reports,
            hosts=self.hosts,
            coordinator=coord,
            passphrase_file=self.passphrase_file,
            id_key_file=self.id_key_file,
            vcenter_password_file=pw,
            vcenter=vcenter,
        )
        path.write_text(text, encoding="utf-8")
        return path

    def repo_args(self) -> list[str]:
        """``--repo`` (and on S3 ``--s3-config``, ``--cache-dir``) for one-shot commands."""
        if not self.spec.s3_url:
            return ["--repo", str(self.repo)]
        cache = self.workdir / "cache" / "cli"
        return ["--repo", self.spec.s3_url, "--s3-config", str(self.spec.s3_config),
                "--cache-dir", str(cache)]  # fmt: skip

    # ---- processes -------------------------------------------------------------------
    def _env(self, extra: dict[str, str]) -> dict[str, str]:
        env = {**os.environ, **self.spec.env, **extra}
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        if self.spec.encrypt and self.passphrase_file.exists():
            # For one-shot repository commands (restore, verify, id-key); services read
            # repository.passphrase from the config.
            env["VMBACKUP_PASSPHRASE"] = self.passphrase_file.read_text()
        env.pop("VMBACKUP_TEST_BROKER", None)
        return env

    def run(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        """Run one ``vmbackup`` command as this stack runs them (``env``: extra variables);
        the caller judges the result."""
        return subprocess.run(
            [sys.executable, "-m", "vmbackup", *args],
            cwd=ROOT,
            env=self._env(env or {}),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _vmbackup(self, *args: str, timeout: float = 600) -> str:
        res = self.run(*args, timeout=timeout)
        if res.returncode != 0:
            raise StackError(
                f"vmbackup {' '.join(args)} exited {res.returncode}: {res.stderr.strip()[-2000:]}"
            )
        return res.stdout

    def start_proc(self, role: str, index: int) -> Proc:
        name = f"{role}-{index + 1}"
        old = self.procs.get(name)
        port = old.metrics_port if old else free_port()
        proc = Proc(role, index, name, port, self.logs / f"{name}.log")
        env = {"VMBACKUP_METRICS__PORT": str(port)}
        if role == "writer":
            env["VMBACKUP_WRITER__NAME"] = name
            env["VMBACKUP_WRITER__SHARDS"] = shard_sets(self.spec.n_shards, self.spec.writers)[
                index
            ]
        elif role == "proxy":
            env["VMBACKUP_PROXY__NAME"] = name
        else:
            raise StackError(f"unknown role {role!r}")
        if role in self.accounts:
            acc = self.accounts[role]
            env["VMBACKUP_BROKER__USER"] = acc.user
            env["VMBACKUP_BROKER__PASSWORD"] = f"{{ file = {toml_str(str(acc.password_file))} }}"
        proc.log_file = open(proc.log_path, "ab")  # noqa: SIM115 - closed in stop_proc
        proc.popen = subprocess.Popen(
            [sys.executable, "-m", "vmbackup", role, "--config", str(self.config_path)],
            cwd=ROOT,
            env=self._env(env),
            stdout=proc.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def wait_ready(self, proc: Proc, timeout: float = 60.0) -> None:
        """Until the process logs that its consumer runs (or fail with its log's tail)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive:
                raise StackError(f"{proc.name} exited at start:\n{self.tail(proc)}")
            with contextlib.suppress(OSError):
                if b'"consumer started"' in proc.log_path.read_bytes():
                    return
            time.sleep(0.1)
        raise StackError(f"{proc.name} not ready within {timeout:.0f} s:\n{self.tail(proc)}")

    def metric(self, name: str, sample: str) -> float:
        """The sum of the samples on process ``name``'s /metrics whose line starts with
        ``sample`` (a metric name, or a name and the start of its labels)."""
        import urllib.request

        port = self.procs[name].metrics_port
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
        lines = text.decode().splitlines()
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(sample))

    def tail(self, proc: Proc, lines: int = 20) -> str:
        try:
            return "\n".join(proc.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        if proc.popen is not None and proc.alive:
            os.killpg(proc.popen.pid, sig)
            proc.popen.wait(timeout=60)

    def restart(self, name: str) -> Proc:
        old = self.procs[name]
        if old.alive:
            self.kill(name)
        if old.log_file:
            old.log_file.close()
        # Keep the old log beside the new one so wait_ready sees only the new start.
        old.log_path.rename(old.log_path.with_suffix(f".{int(time.time() * 1000)}.log"))
        proc = self.start_proc(old.role, old.index)
        self.wait_ready(proc)
        return proc

    def stop_proc(self, proc: Proc, timeout: float = 30.0) -> None:
        if proc.popen is not None and proc.alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGTERM)
            try:
                proc.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait(timeout=30)
        if proc.log_file:
            proc.log_file.close()
            proc.log_file = None

    def stop(self) -> None:
        # A coordinator run still going (the caller was interrupted) goes first: it would
        # otherwise outlive the stack and keep its snapshots.
        for job in self._jobs:
            if job.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(job.pid, signal.SIGTERM)
                try:
                    job.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(job.pid, signal.SIGKILL)
                    job.wait(timeout=30)
        for proc in list(self.procs.values()):
            self.stop_proc(proc)
        if self.spec.vhost is None:
            with contextlib.suppress(Exception):
                rabbitmqctl("delete_vhost", self.vhost)
        self._drop_accounts()

    def _drop_accounts(self) -> None:
        atexit.unregister(self._drop_accounts)
        if self.accounts:
            self.accounts = {}
            delete_accounts(rabbitmqctl, self.vhost)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- jobs ------------------------------------------------------------------------
    def backup_popen(self, policy: str = "all") -> tuple[subprocess.Popen[bytes], Path, Path]:
        """Start ``vmbackup backup`` without waiting (for progress display or faults)."""
        self._runs += 1
        log_path = self.logs / f"coordinator-{self._runs}.log"
        report_path = self.reports / f"run-{self._runs}.json"
        log_file = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            popen = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "vmbackup",
                    "backup",
                    "--config",
                    str(self.config_path),
                    "--policy",
                    policy,
                    "--report",
                    str(report_path),
                ],
                cwd=ROOT,
                env=self._env({"VMBACKUP_METRICS__PORT": str(free_port())}),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log_file.close()
        self._jobs.append(popen)
        return popen, log_path, report_path

    def backup(self, policy: str = "all", timeout: float = 1800) -> BackupRun:
        t0 = time.monotonic()
        popen, log_path, report_path = self.backup_popen(policy)
        try:
            rc = popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(popen.pid, signal.SIGKILL)
            raise StackError(f"backup did not finish within {timeout:.0f} s") from None
        return self.finish_run(rc, report_path, log_path, time.monotonic() - t0)

    def finish_run(self, rc: int, report_path: Path, log_path: Path, seconds: float) -> BackupRun:
        try:
            report = json.loads(report_path.read_text())
        except (OSError, json.JSONDecodeError):
            report = {}
        return BackupRun(rc, report, seconds, log_path)

    def vmbackup(self, *args: str, timeout: float = 600) -> str:
        """Run any ``vmbackup`` operation against this stack's repository/config."""
        return self._vmbackup(*args, timeout=timeout)

    def restore_vm(self, point_id: str, datastore: str, name: str, transport: str) -> Any:
        """`vmbackup restore-vm` of a point to a new VM on the lab: its JSON result."""
        out = self._vmbackup(
            "restore-vm",
            point_id,
            "--config",
            str(self.config_path),
            "--to",
            "lab",
            "--datastore",
            datastore,
            "--name",
            name,
            "--transport",
            transport,
            "--json",
            timeout=600,
        )
        # log lines before it are one-line JSON; the result is the envelope's (docs/cli-json.md)
        return json.loads(out[out.index("{\n") :])["result"]

    def restore_digest(self, point_id: str, disk_key: int) -> str:
        """SHA-256 of a disk restored from the repository through `vmbackup restore` (streamed)."""
        import hashlib

        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vmbackup",
                "restore",
                *self.repo_args(),
                "--point",
                point_id,
                "--disk",
                str(disk_key),
                "--out",
                "-",
            ],
            cwd=ROOT,
            env=self._env({}),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stderr is not None
        h = hashlib.sha256()
        out = proc.stdout
        for block in iter(lambda: out.read(8 << 20), b""):
            h.update(block)
        err = proc.stderr.read().decode(errors="replace")
        if proc.wait() != 0:
            raise StackError(f"restore of {point_id} disk {disk_key} failed: {err.strip()}")
        return h.hexdigest()

    def verify(self) -> str:
        """`vmbackup verify` of the whole repository; raises StackError on damage."""
        return self._vmbackup("verify", *self.repo_args())
