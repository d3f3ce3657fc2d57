"""Lab: start, drive and stop one vcsim-lab process."""

from __future__ import annotations

import json
import os
import selectors
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from lab import guest
from lab.build import build
from lab.spec import LabError, LabSpec

_UNSET: Any = object()


def _read_ready_line(proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    buf = b""
    try:
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LabError(f"the lab did not print its ready line within {timeout:.0f} s")
            if not sel.select(left):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                raise LabError("the lab exited before it was ready")
            buf += chunk
    finally:
        sel.close()
    line = buf.split(b"\n", 1)[0]
    try:
        ready: dict[str, Any] = json.loads(line)
    except json.JSONDecodeError as exc:
        raise LabError(f"the lab's ready line is not JSON: {line[:200]!r}") from exc
    return ready


class Lab:
    """A running simulator. Use `Lab.start(spec)`, preferably as a context manager."""

    def __init__(self, proc: subprocess.Popen[bytes], ready: dict[str, Any], log_path: Path):
        self._proc = proc
        self._log_path = log_path
        self.url: str = ready["url"]
        self.user: str = ready["user"]
        self.password: str = ready["password"]
        self.thumbprint: str = ready["thumbprint"]  # SHA-256, hex with colons
        self.control_url: str = ready["control"]
        self.datastores: dict[str, str] = ready["datastores"]
        self.plain: bool = ready["plain"]
        self.pid: int = ready["pid"]
        parts = urlsplit(self.url)
        self.host: str = parts.hostname or "127.0.0.1"
        self.port: int = parts.port or 443
        self._ssl = ssl.create_default_context()
        # The lab's certificate is self-signed; control calls stay on loopback.
        self._ssl.check_hostname = False
        self._ssl.verify_mode = ssl.CERT_NONE
        self._vms: list[dict[str, Any]] | None = None

    # ---- life cycle ----

    @classmethod
    def start(
        cls,
        spec: LabSpec | None = None,
        plain: bool = False,
        *,
        timeout: float = 300.0,
        extra_flags: list[str] | None = None,
    ) -> Lab:
        """Build if needed, start the simulator and wait for its ready line."""
        spec = spec or LabSpec()
        binary = build()
        args = [str(binary), *spec.to_flags(), "--exit-on-stdin-eof"]
        if plain:
            args.append("--plain")
        args += extra_flags or []
        fd, log_name = tempfile.mkstemp(prefix="vcsim-lab-", suffix=".log")
        log_path = Path(log_name)
        # stdin is a pipe the lab watches: if this process dies, the lab stops too.
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=fd)
        os.close(fd)
        try:
            ready = _read_ready_line(proc, timeout)
        except LabError as exc:
            proc.kill()
            proc.wait()
            tail = log_path.read_text(errors="replace")[-2000:]
            log_path.unlink(missing_ok=True)
            raise LabError(f"{exc}; its log ends with:\n{tail}") from None
        return cls(proc, ready, log_path)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM the lab and wait for it to remove its files. Idempotent."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        for stream in (self._proc.stdin, self._proc.stdout):
            if stream is not None:
                stream.close()
        self._log_path.unlink(missing_ok=True)

    @property
    def running(self) -> bool:
        return self._proc.poll() is None

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- control endpoint ----

    def _call(self, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.control_url + path,
            data=data,
            method="GET" if body is None else "POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, context=self._ssl, timeout=120) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as exc:
            try:
                detail = json.load(exc).get("error", "")
            except (ValueError, AttributeError):
                detail = str(exc)
            raise LabError(f"lab control {path}: {detail}") from None

    def vms(self) -> list[dict[str, Any]]:
        """Every VM: name, moref, uuid, host, cluster, datacenter, cbt, disks[...]."""
        self._vms = self._call("/vms")
        return self._vms

    def vm(self, vm: str) -> dict[str, Any]:
        """One VM by name or moref (from a cached listing, refreshed on a miss)."""
        for refresh in (False, True):
            if refresh or self._vms is None:
                self.vms()
            assert self._vms is not None
            for item in self._vms:
                if vm in (item["name"], item["moref"]):
                    return item
        raise LabError(f"no VM named {vm!r} in the lab")

    def disk(self, vm: str, disk_key: int) -> dict[str, Any]:
        for disk in self.vm(vm)["disks"]:
            if disk["key"] == disk_key:
                return dict(disk)
        raise LabError(f"VM {vm!r} has no disk with key {disk_key}")

    def snapshot_events(self) -> list[dict[str, Any]]:
        """Every snapshot the lab saw: vm, moref, host, snapshot, created_at, removed_at."""
        events: list[dict[str, Any]] = self._call("/snapshot-events")
        return events

    def inject(
        self,
        *,
        fail_snapshot_vm: str | None = _UNSET,
        fail_remove_vm: str | None = _UNSET,
        fail_relocate_vm: str | None = _UNSET,
        reset_cbt: tuple[str, int] | None = None,
        grow_disk: tuple[str, int, int] | None = None,
        slow_soap_ms: int | None = None,
        slow_soap_method: str | None = None,
        expire_sessions: bool = False,
        vm_connection_state: tuple[str, str] | None = None,
    ) -> dict[str, Any]:
        """Inject faults. fail_snapshot_vm / fail_remove_vm = None (or "") clear theirs.

        fail_remove_vm: RemoveSnapshot_Task of that VM's snapshots fails (FileLocked).
        fail_relocate_vm: RelocateVM_Task of that VM (any VM, created ones included) to
        another datastore fails (NoDiskSpace) before anything is copied.
        vm_connection_state: (VM name, state) sets its runtime.connectionState:
        "disconnected" (its host is down), "orphaned", "inaccessible", "invalid", or
        "connected" again.
        """
        body: dict[str, Any] = {}
        if vm_connection_state is not None:
            body["vm_connection_state"] = list(vm_connection_state)
        if fail_snapshot_vm is not _UNSET:
            body["fail_snapshot_vm"] = fail_snapshot_vm or ""
        if fail_remove_vm is not _UNSET:
            body["fail_remove_vm"] = fail_remove_vm or ""
        if fail_relocate_vm is not _UNSET:
            body["fail_relocate_vm"] = fail_relocate_vm or ""
        if reset_cbt is not None:
            body["reset_cbt"] = list(reset_cbt)
        if grow_disk is not None:
            body["grow_disk"] = list(grow_disk)
            self._vms = None
        if slow_soap_ms is not None:
            body["slow_soap_ms"] = slow_soap_ms
        if slow_soap_method is not None:
            body["slow_soap_method"] = slow_soap_method
        if expire_sessions:
            body["expire_sessions"] = True
        result: dict[str, Any] = self._call("/inject", body)
        return result

    def settle(self) -> dict[str, Any]:
        """Bring every disk's CBT state to where a long-running VM's would be: digested as
        it is now, its write log started afresh (what a disk's first snapshot otherwise
        does, hashing the whole disk inside the first backup). Call it after seeding the
        disks, before timing a backup: ESXi tracks writes as they happen, so its first
        backup pays nothing for CBT. Returns {"disks": n, "seconds": s}."""
        result: dict[str, Any] = self._call("/settle", {})
        return result

    # ---- disks ----

    def local_path(self, ds_path: str) -> Path:
        """Local path of the data file of "[ds] dir/x.vmdk", i.e. dir/x-flat.vmdk."""
        return guest.flat_path(self.datastores, ds_path)

    def write_guest_data(self, vm: str, disk_key: int, offset: int, data: bytes) -> None:
        """Write bytes into the VM's current disk, as its guest would."""
        disk = self.disk(vm, disk_key)
        guest.write_at(self.local_path(disk["file"]), disk["capacity"], offset, data)

    def read_guest_data(self, vm: str, disk_key: int, offset: int, length: int) -> bytes:
        disk = self.disk(vm, disk_key)
        return guest.read_at(self.local_path(disk["file"]), disk["capacity"], offset, length)

    def fill_disks(
        self,
        seed: int = 1,
        template_vms: int | list[str] | None = None,
        vms: list[str] | None = None,
        mix: guest.FillMix | None = None,
        block_size: int = guest.DEFAULT_BLOCK,
    ) -> guest.FillReport:
        """Fill disks with a realistic, seeded mix (see lab.guest.fill)."""
        listing = self.vms()
        if vms is not None:
            wanted = set(vms)
            listing = [v for v in listing if v["name"] in wanted or v["moref"] in wanted]
            if len(listing) != len(wanted):
                raise LabError(f"fill_disks: unknown VMs in {sorted(wanted)!r}")
        return guest.fill(self.datastores, listing, seed, template_vms, mix, block_size)

    # ---- clients ----

    def connect(self) -> Any:
        """A pyVmomi ServiceInstance logged in to the lab (certificate checks off)."""
        from pyVim.connect import SmartConnect

        return SmartConnect(
            host=self.host,
            port=self.port,
            user=self.user,
            pwd=self.password,
            disableSslCertValidation=True,
        )
