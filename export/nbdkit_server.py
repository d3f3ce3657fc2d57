"""Start and stop the nbdkit process that serves one export (our plugin in nbdkit's
Python plugin, plus its cow filter for a writable export).

Everything the process owns lives in one private directory (0700) removed at stop:
its pid file, which nbdkit writes once it listens (readiness), and the cow filter's
overlay (its TMPDIR: nbdkit unlinks the file at once, so even a killed export leaves no
written data behind, only this directory). The repository itself is only read.

The passphrase of an encrypted repository goes through an inherited pipe, written and
closed before nbdkit starts, whose number alone is on the command line
(export/plugin_config.py says why not argv or the environment). nbdkit runs in its own
session, so a Ctrl-C reaches `vmbackup export`, which stops it: one stop path for both
SIGINT and SIGTERM. ``--exit-with-parent`` ends it if vmbackup dies.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repository.errors import RepositoryError
from repository.repo_location import is_s3

PLUGIN = Path(__file__).with_name("nbdkit_plugin.py")
DEFAULT_PORT = 10809  # the NBD port IANA assigned
STOP_GRACE = 10.0  # seconds nbdkit gets to finish its requests after SIGTERM


class ExportError(RepositoryError):
    """The export could not be started (the text says why and what to do)."""


@dataclass(frozen=True, slots=True)
class ExportSpec:
    repo: Path | str  # a directory, or s3://BUCKET/PREFIX with s3_config
    point: str
    disk: int
    passphrase: str | None = None
    writable: bool = False
    cache_mib: int = 128
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    socket: Path | None = None  # a Unix socket instead of host:port
    overlay_dir: Path | None = None  # where the cow overlay grows (default $TMPDIR, /var/tmp)
    threads: int = 4
    metrics_port: int = 0
    metrics_address: str = "127.0.0.1"
    nbdkit: str = "nbdkit"
    s3_config: Path | None = None  # a repository on S3: its S3 config file
    cache_dir: Path | None = None  # ... and its local cache (default: the per-user one)


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT``, ``HOST`` or ``:PORT`` -> (host, port)."""
    host, port = text.strip(), str(DEFAULT_PORT)
    if host.startswith("["):
        end = host.find("]")
        if end < 0 or (host[end + 1 :] and not host[end + 1 :].startswith(":")):
            raise ValueError(f"not an address: {text!r} (e.g. [::1]:10809)")
        host, rest = host[1:end], host[end + 1 :]
        port = rest[1:] if rest else port
    elif host.count(":") == 1:
        host, port = host.split(":")
    host = host or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not a port: {port!r} in {text!r} (1..65535)")
    return host, int(port)


def export_uri(spec: ExportSpec) -> str:
    """What a client connects to (the NBD URI standard: nbdinfo, nbdcopy, qemu)."""
    if spec.socket is not None:
        return f"nbd+unix:///?socket={spec.socket.absolute()}"
    host = spec.host
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass  # a name
    return f"nbd://{host}:{spec.port}/"


def check_nbdkit(nbdkit: str) -> str:
    """Why nbdkit cannot run our plugin here ("" when it can): no nbdkit, no Python
    plugin, or a plugin that embeds another Python than this one (its compiled
    modules, zstd and AES among them, would not load)."""
    exe = shutil.which(nbdkit)
    if exe is None:
        return f"{nbdkit} not found: install nbdkit and nbdkit-plugin-python"
    res = subprocess.run(
        [exe, "python", "--dump-plugin"], capture_output=True, text=True, timeout=30, check=False
    )
    if res.returncode != 0:
        return "nbdkit has no Python plugin: install nbdkit-plugin-python"
    version = next(
        (ln.split("=", 1)[1] for ln in res.stdout.splitlines() if ln.startswith("python_version=")),
        "",
    )
    mine = f"{sys.version_info.major}.{sys.version_info.minor}"
    if version.split(".")[:2] != mine.split("."):
        return (
            f"nbdkit's Python plugin embeds Python {version or '?'}, vmbackup runs on {mine}:"
            " install vmbackup in a venv of that Python (the system python3)"
        )
    return ""


def _python_path() -> str:
    """PYTHONPATH for the embedded interpreter: where our packages and their
    dependencies are, never this interpreter's standard library (nbdkit's has its own)."""
    ours = str(Path(__file__).resolve().parent.parent)
    base = Path(sys.base_prefix).resolve()
    dirs = [ours]
    for p in sys.path:
        if not p or not os.path.isdir(p):
            continue
        rp = Path(p).resolve()
        if rp == base or base in rp.parents or str(rp) in dirs:
            continue
        dirs.append(str(rp))
    return os.pathsep.join(dirs)


class RunningExport:
    """An nbdkit serving one export; :meth:`stop` ends it and removes what it owned."""

    def __init__(
        self,
        spec: ExportSpec,
        proc: subprocess.Popen[bytes],
        workdir: Path,
        status: int,
        control: int,
    ) -> None:
        self.spec = spec
        self.proc = proc
        self.workdir = workdir
        self.uri = export_uri(spec)
        self._status = status  # read end of the plugin's stats pipe
        self._control = control  # write end of its control pipe: closed = stop
        self.stats: dict[str, Any] | None = None
        self._stop_at: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def stop_requested(self) -> bool:
        return self._stop_at is not None

    def request_stop(self) -> None:
        """Ask nbdkit to stop (safe in a signal handler): SIGTERM now, SIGKILL from
        :meth:`wait` if it still runs STOP_GRACE seconds later."""
        if self._stop_at is None:
            self._stop_at = time.monotonic()
        if self._control >= 0:
            os.close(self._control)
            self._control = -1
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self) -> int:
        """Wait for nbdkit to end (after a stop request or on its own), clean up and
        return its exit status."""
        while True:
            try:
                rc = self.proc.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                if self._stop_at is not None and time.monotonic() - self._stop_at > STOP_GRACE:
                    self.proc.kill()
        self._finish()
        return rc

    def stop(self) -> int:
        self.request_stop()
        return self.wait()

    def _finish(self) -> None:
        if self._control >= 0:
            os.close(self._control)
            self._control = -1
        if self._status >= 0:
            data = b""
            try:
                while block := os.read(self._status, 65536):
                    data += block
            finally:
                os.close(self._status)
                self._status = -1
            lines = data.decode("utf-8", "replace").strip().splitlines()
            if lines:
                try:
                    self.stats = json.loads(lines[-1])
                except ValueError:
                    self.stats = None
        shutil.rmtree(self.workdir, ignore_errors=True)
        if self.spec.socket is not None:  # nbdkit leaves it; we refused to start on one
            self.spec.socket.unlink(missing_ok=True)

    def __enter__(self) -> RunningExport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def nbdkit_argv(
    spec: ExportSpec, workdir: Path, pass_fd: int, status_fd: int, control_fd: int
) -> list[str]:
    argv = [
        spec.nbdkit,
        "--foreground",
        "--exit-with-parent",
        "--pidfile",
        str(workdir / "nbdkit.pid"),
        f"--threads={spec.threads}",
    ]
    if spec.socket is not None:
        argv += ["--unix", str(spec.socket.absolute())]
    else:
        argv += ["--ipaddr", spec.host, "--port", str(spec.port)]
    if spec.writable:
        argv.append("--filter=cow")  # writes stay in its overlay, the plugin stays read-only
    else:
        argv.append("--readonly")
    argv += [
        "python",
        str(PLUGIN),
        f"repo={spec.repo if is_s3(spec.repo) else Path(spec.repo).absolute()}",
        f"point={spec.point}",
        f"disk={spec.disk}",
        f"cache-mib={spec.cache_mib}",
        f"status-fd={status_fd}",
        f"control-fd={control_fd}",
    ]
    if pass_fd >= 0:
        argv.append(f"passphrase-fd={pass_fd}")
    if spec.s3_config is not None:
        argv.append(f"s3-config={spec.s3_config.absolute()}")
    if spec.cache_dir is not None:
        argv.append(f"cache-dir={spec.cache_dir.absolute()}")
    if spec.metrics_port:
        argv += [f"metrics-port={spec.metrics_port}", f"metrics-address={spec.metrics_address}"]
    return argv


def start_export(spec: ExportSpec, *, ready_timeout: float = 60.0) -> RunningExport:
    """Start nbdkit and return once it listens; ExportError when it does not."""
    why = check_nbdkit(spec.nbdkit)
    if why:
        raise ExportError(why)
    if spec.socket is not None and spec.socket.exists():
        raise ExportError(f"socket {spec.socket} exists: remove it or give another --socket")
    parent = spec.overlay_dir or Path(os.environ.get("TMPDIR") or "/var/tmp")
    try:
        workdir = Path(tempfile.mkdtemp(prefix="vmbackup-export-", dir=parent))
    except OSError as exc:
        raise ExportError(f"cannot create the export's directory in {parent}: {exc}") from None
    pass_r = -1
    status_r, status_w = os.pipe()
    control_r, control_w = os.pipe()
    fds = [status_w, control_r]
    try:
        if spec.passphrase is not None:
            pass_r, pass_w = os.pipe()
            with os.fdopen(pass_w, "wb") as fh:  # a passphrase fits the pipe's buffer
                fh.write(spec.passphrase.encode("utf-8"))
            fds.append(pass_r)
        env = dict(os.environ, PYTHONPATH=_python_path(), TMPDIR=str(workdir))
        env.pop("VMBACKUP_PASSPHRASE", None)  # nbdkit gets it through the pipe only
        proc = subprocess.Popen(
            nbdkit_argv(spec, workdir, pass_r, status_w, control_r),
            env=env,
            pass_fds=fds,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    except BaseException:
        for fd in (status_r, control_w, *fds):
            os.close(fd)
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    for fd in fds:  # the child holds them now
        os.close(fd)
    running = RunningExport(spec, proc, workdir, status_r, control_w)
    deadline = time.monotonic() + ready_timeout
    pidfile = workdir / "nbdkit.pid"
    try:
        while not pidfile.exists():
            rc = proc.poll()
            if rc is not None:
                running.wait()
                raise ExportError(
                    f"nbdkit exited with status {rc} before serving {running.uri}"
                    " (its error is above)"
                )
            if time.monotonic() > deadline:
                raise ExportError(f"nbdkit did not listen within {ready_timeout:.0f} s")
            time.sleep(0.05)
    except BaseException:  # a timeout, or a signal raised in this thread meanwhile
        running.stop()  # idempotent: its directory and socket go as well
        raise
    return running
