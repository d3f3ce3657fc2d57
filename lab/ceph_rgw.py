"""The lab's S3: a real one-node Ceph (ceph-mon, ceph-osd, radosgw) from Debian's packages.

``start`` is idempotent: a data directory whose daemons all run and whose gateway
answers is reused as it is; one whose bootstrap finished but whose daemons are down is
restarted (memstore keeps what a clean stop wrote out); anything else (nothing there, a
half bootstrap, a restart that fails) is wiped and bootstrapped from nothing, in about
13 s. No ceph-mgr: S3 does not need one (so nothing here calls what goes through it,
such as ``osd purge``). Daemons daemonize themselves and write pid files; ``stop``
sends SIGTERM to each one whose pid file names a live process of that program (in
reverse start order, one at a time), and waits (a clean stop is what makes memstore
write its data out).

The S3 user's keys are made by ``radosgw-admin`` (a short-lived process: no key is ever
on the command line of a daemon) and written to ``s3-credentials`` (mode 0600) in the
AWS credentials-file format that repository/s3_config.py reads.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from lab.ceph_conf import MON_ID, OSD_ID, RGW_NAME, CephPaths, ceph_conf
from lab.spec import LabError

DEFAULT_DIR = Path("/tmp/vmbackup-rgw")
LAYOUT = 3  # of the data directory; a directory of another layout is bootstrapped anew
REGION = "default"  # RGW's zonegroup of a fresh single-site cluster
S3_USER = "vmbackup"
# (name in pid files, program) of each daemon, in start order
DAEMONS = ((f"mon.{MON_ID}", "ceph-mon"), (f"osd.{OSD_ID}", "ceph-osd"), (RGW_NAME, "radosgw"))


@dataclass(frozen=True)
class RgwInfo:
    """What ``start`` and ``status`` print (one JSON line)."""

    endpoint: str  # plain http (loopback)
    tls_endpoint: str  # https, with a self-signed certificate for IP 127.0.0.1
    ca_file: str  # that certificate: what a client verifies tls_endpoint against
    region: str
    credentials_file: str
    data_dir: str
    objectstore: str
    pids: dict[str, int]
    running: bool
    reused: bool = False
    seconds: float = 0.0  # how long start took

    def json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _run(paths: CephPaths, *argv: str, timeout: float = 60) -> str:
    """A Ceph tool as the admin client; LabError with its stderr when it fails."""
    cmd = [*argv, "-c", str(paths.conf)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise LabError(
            f"{argv[0]} is not installed: scripts/setup-system.sh installs Ceph"
        ) from None
    except subprocess.TimeoutExpired:
        raise LabError(f"{' '.join(argv[:4])} did not finish within {timeout:.0f} s") from None
    if res.returncode != 0:
        raise LabError(
            f"{' '.join(argv[:4])} failed ({res.returncode}): {res.stderr.strip()[-800:]}"
        )
    return res.stdout


def _live_pid(paths: CephPaths, name: str, program: str) -> int | None:
    """The pid in ``name``'s pid file if that process runs ``program`` (not a reused pid)."""
    try:
        pid = int(paths.pid_file(name).read_text().strip())
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return None
    # comm is cut at 15 characters; an exited daemon's zombie is not its daemon
    return pid if program.startswith(comm) and process_runs(pid) else None


def process_runs(pid: int) -> bool:
    """Not gone and not a zombie (an exited daemon waiting for its parent to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"  # the state follows "(comm)"


def _state(paths: CephPaths) -> dict[str, object]:
    try:
        doc = json.loads(paths.state.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _answers(endpoint: str, timeout: float = 3.0) -> bool:
    """Whether the gateway answers S3 (an anonymous GET / gets a bucket listing)."""
    try:
        with urllib.request.urlopen(endpoint + "/", timeout=timeout) as resp:
            return bool(resp.status == 200)
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except OSError:
        return False


def _info(paths: CephPaths, *, reused: bool = False, seconds: float = 0.0) -> RgwInfo:
    st = _state(paths)
    pids = {n: p for n, prog in DAEMONS if (p := _live_pid(paths, n, prog)) is not None}
    endpoint = f"http://127.0.0.1:{st.get('rgw_port', 0)}"
    done = bool(st.get("bootstrapped")) and st.get("layout") == LAYOUT
    running = len(pids) == len(DAEMONS) and done and _answers(endpoint)
    return RgwInfo(
        endpoint=endpoint,
        tls_endpoint=f"https://127.0.0.1:{st.get('tls_port', 0)}",
        ca_file=str(paths.tls_cert),
        region=REGION,
        credentials_file=str(paths.credentials),
        data_dir=str(paths.root),
        objectstore=str(st.get("objectstore", "")),
        pids=pids,
        running=running,
        reused=reused,
        seconds=round(seconds, 2),
    )


def status(data_dir: Path = DEFAULT_DIR) -> RgwInfo:
    return _info(CephPaths(data_dir))


def stop(data_dir: Path = DEFAULT_DIR, timeout: float = 60) -> RgwInfo:
    """SIGTERM to each daemon by its pid file, one after the other in reverse start order
    (gateway, OSD, monitor), each once the one before is gone: a gateway whose OSD is gone
    hangs up to a minute, an OSD whose monitor is gone waits out
    ``osd_mon_shutdown_timeout`` (5 s) to say it goes down, and a monitor that never heard
    that waits for the OSD's heartbeat to time out at the next start (about 8 s more)."""
    paths = CephPaths(data_dir)
    deadline = time.monotonic() + timeout
    for name, prog in reversed(DAEMONS):
        pids = [p for p in [_live_pid(paths, name, prog)] if p is not None]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        while any(process_runs(p) for p in pids):
            if time.monotonic() > deadline:
                for pid in pids:  # a daemon that ignores SIGTERM this long is stuck
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.1)
    return _info(paths)


def start(
    data_dir: Path = DEFAULT_DIR, *, objectstore: str = "memstore", timeout: float = 120
) -> RgwInfo:
    """A running gateway on ``data_dir``: reused, restarted, or bootstrapped (see above)."""
    t0 = time.monotonic()
    paths = CephPaths(data_dir)
    info = _info(paths)
    if info.running and info.objectstore == objectstore:
        return _info(paths, reused=True, seconds=time.monotonic() - t0)
    stop(data_dir)  # whatever runs of a broken or different cluster
    st = _state(paths)
    if (
        st.get("bootstrapped")
        and st.get("layout") == LAYOUT
        and st.get("objectstore") == objectstore
    ):
        try:
            _start_daemons(paths, str(st["endpoint"]), timeout)
            return _info(paths, seconds=time.monotonic() - t0)
        except LabError:
            stop(data_dir)  # fall through: from nothing
    try:
        _bootstrap(paths, objectstore, timeout)
    except BaseException:
        stop(data_dir)  # no half-made cluster left running
        raise
    info = _info(paths, seconds=time.monotonic() - t0)
    if not info.running:
        raise LabError(f"the Ceph gateway on {data_dir} did not come up: see {paths.log}")
    return info


def _bootstrap(paths: CephPaths, objectstore: str, timeout: float) -> None:
    if paths.root.exists():  # every daemon of it is stopped (start() called stop())
        shutil.rmtree(paths.root)
    for d in (paths.root, paths.run, paths.log, paths.root / "mon", paths.root / "rgw"):
        d.mkdir(parents=True, exist_ok=True)
    os.chmod(paths.root, 0o700)  # keyrings and the S3 keys are in it
    fsid = str(uuid.uuid4())
    mon_port, rgw_port, tls_port = _free_port(), _free_port(), _free_port()
    endpoint = f"http://127.0.0.1:{rgw_port}"
    paths.conf.write_text(ceph_conf(paths, fsid, mon_port, rgw_port, tls_port, objectstore))
    _make_tls_cert(paths)
    doc: dict[str, object] = {"fsid": fsid, "mon_port": mon_port, "rgw_port": rgw_port}
    doc |= {"tls_port": tls_port, "endpoint": endpoint, "objectstore": objectstore}
    doc |= {"layout": LAYOUT, "bootstrapped": False}
    paths.state.write_text(json.dumps(doc))

    mon_keyring = paths.keyring(f"mon.{MON_ID}")
    admin_keyring = paths.keyring("client.admin")
    auth = "ceph-authtool"
    _run(paths, auth, "--create-keyring", str(mon_keyring), "--gen-key", "-n", "mon.",
         "--cap", "mon", "allow *")  # fmt: skip
    _run(paths, auth, "--create-keyring", str(admin_keyring), "--gen-key", "-n",
         "client.admin", "--cap", "mon", "allow *", "--cap", "osd", "allow *",
         "--cap", "mgr", "allow *")  # fmt: skip
    _run(paths, auth, str(mon_keyring), "--import-keyring", str(admin_keyring))
    _run(paths, "monmaptool", "--create", "--addv", MON_ID, f"[v2:127.0.0.1:{mon_port}]",
         "--fsid", fsid, str(paths.monmap))  # fmt: skip
    _run(paths, "ceph-mon", "--mkfs", "-i", MON_ID, "--monmap", str(paths.monmap),
         "--keyring", str(mon_keyring))  # fmt: skip
    _daemon(paths, "ceph-mon", "-i", MON_ID)

    osd_uuid = str(uuid.uuid4())
    osd_id = _run(paths, "ceph", "osd", "new", osd_uuid, timeout=timeout).strip()
    if osd_id != str(OSD_ID):
        raise LabError(f"ceph osd new gave id {osd_id!r}, not {OSD_ID}: a leftover cluster?")
    (paths.root / "osd" / str(OSD_ID)).mkdir(parents=True)
    # --no-mon-config: the OSD's key is not registered yet, so it cannot ask the mon
    _run(paths, "ceph-osd", "-i", str(OSD_ID), "--mkfs", "--mkkey", "--no-mon-config",
         "--osd-uuid", osd_uuid, timeout=timeout)  # fmt: skip
    _run(paths, "ceph", "auth", "add", f"osd.{OSD_ID}", "osd", "allow *", "mon",
         "allow profile osd", "-i", str(paths.keyring(f"osd.{OSD_ID}")))  # fmt: skip
    _daemon(paths, "ceph-osd", "-i", str(OSD_ID))

    _run(paths, "ceph", "auth", "get-or-create", RGW_NAME, "mon", "allow rw", "osd", "allow rwx",
         "-o", str(paths.keyring(RGW_NAME)))  # fmt: skip
    _daemon(paths, "radosgw", "-n", RGW_NAME)
    _wait_answers(paths, endpoint, timeout)
    _make_user(paths, timeout)
    doc["bootstrapped"] = True
    paths.state.write_text(json.dumps(doc))


def _make_tls_cert(paths: CephPaths) -> None:
    """A self-signed certificate for IP 127.0.0.1 (no DNS name: a client that connects
    as "localhost" must fail the host name check), key mode 0600."""
    cmd = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
           "ec_paramgen_curve:prime256v1", "-nodes", "-days", "3650",
           "-subj", "/CN=vmbackup lab rgw", "-addext", "subjectAltName=IP:127.0.0.1",
           "-addext", "basicConstraints=critical,CA:TRUE",
           "-keyout", str(paths.tls_key), "-out", str(paths.tls_cert)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    if res.returncode != 0:
        raise LabError(f"openssl could not make the gateway's certificate: {res.stderr[-400:]}")
    os.chmod(paths.tls_key, 0o600)


def _daemon(paths: CephPaths, program: str, *argv: str) -> None:
    # Without -f the daemon forks into the background and writes its pid file.
    _run(paths, program, *argv)


def _start_daemons(paths: CephPaths, endpoint: str, timeout: float) -> None:
    _daemon(paths, "ceph-mon", "-i", MON_ID)
    _daemon(paths, "ceph-osd", "-i", str(OSD_ID))
    _daemon(paths, "radosgw", "-n", RGW_NAME)
    _wait_answers(paths, endpoint, timeout)


def _wait_answers(paths: CephPaths, endpoint: str, timeout: float) -> None:
    t0 = time.monotonic()
    while not _answers(endpoint):
        dead = [n for n, prog in DAEMONS if _live_pid(paths, n, prog) is None]
        waited = time.monotonic() - t0
        if waited > timeout or (dead and waited > 10):  # a dead daemon gets 10 s to appear
            raise LabError(
                f"radosgw at {endpoint} did not answer within {timeout:.0f} s"
                f" (not running: {', '.join(dead) or 'none'}; logs in {paths.log})"
            )
        time.sleep(0.2)


def _make_user(paths: CephPaths, timeout: float) -> None:
    out = _run(paths, "radosgw-admin", "user", "create", f"--uid={S3_USER}",
               "--display-name=vmbackup lab", "-n", "client.admin", timeout=timeout)  # fmt: skip
    key = json.loads(out)["keys"][0]
    write_credentials(paths.credentials, key["access_key"], key["secret_key"])


def write_credentials(path: Path, access_key: str, secret_key: str) -> None:
    """An AWS credentials file, created mode 0600 (never readable by others, even briefly)."""
    text = f"[default]\naws_access_key_id = {access_key}\naws_secret_access_key = {secret_key}\n"
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def admin(data_dir: Path, *argv: str, timeout: float = 60) -> str:
    """``radosgw-admin ARGV`` on the lab's cluster (tests: quotas, a second user)."""
    return _run(CephPaths(data_dir), "radosgw-admin", *argv, "-n", "client.admin", timeout=timeout)
