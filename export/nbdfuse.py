"""Present an NBD export as a regular file, through nbdfuse (libnbd's FUSE client).

nbdfuse mounts over an existing regular file (its "naked" mount point, nbdfuse >= 1.6):
reads and writes of that file become NBD requests, so anything that opens files (a
hypervisor's datastore, an NFS server exporting the directory, cp) sees the export.
One job: mount one file, say when it is ready, unmount it. It needs /dev/fuse and root
(or fusermount3) to unmount.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from repository.errors import RepositoryError

_OCTAL = re.compile(r"\\([0-7]{3})")
STOP_GRACE = 10.0  # seconds nbdfuse gets to exit after its unmount


class NbdfuseError(RepositoryError):
    """The file could not be mounted (the text says why)."""


def mounted(path: Path) -> bool:
    """Whether ``path`` is a mount point in /proc/mounts (octal escapes as the kernel
    writes them: a space is \\040)."""
    want = str(path.absolute())
    with open("/proc/mounts", encoding="utf-8") as fh:
        for line in fh:
            fields = line.split()
            if len(fields) > 1 and _OCTAL.sub(lambda m: chr(int(m[1], 8)), fields[1]) == want:
                return True
    return False


@dataclass
class MountedFile:
    path: Path
    proc: subprocess.Popen[bytes]

    def unmount(self) -> None:
        """Unmount and wait for nbdfuse to end (killed if it does not); idempotent."""
        if mounted(self.path):
            helper = shutil.which("fusermount3")
            argv = [helper, "-u", str(self.path)] if helper else ["umount", str(self.path)]
            subprocess.run(argv, capture_output=True, timeout=60, check=False)
            if mounted(self.path):  # busy: detach it now, it goes once its users close it
                subprocess.run(
                    ["umount", "-l", str(self.path)], capture_output=True, timeout=60, check=False
                )
        try:
            self.proc.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def mount_file(path: Path, socket: Path, *, ready_timeout: float = 60.0) -> MountedFile:
    """Mount the NBD export on the Unix ``socket`` over ``path`` (created empty when
    missing) and return once the file serves; NbdfuseError when it does not."""
    exe = shutil.which("nbdfuse")
    if exe is None:
        raise NbdfuseError("nbdfuse not found: install libnbd-bin (Debian) or nbdfuse")
    if not os.path.exists("/dev/fuse"):
        raise NbdfuseError("/dev/fuse is missing: load the fuse module (modprobe fuse)")
    path.touch(exist_ok=True)
    pidfile = path.with_name(f".{path.name}.nbdfuse.pid")
    pidfile.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [exe, "-P", str(pidfile), str(path), "--unix", str(socket)],
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C reaches vmbackup, which unmounts
    )
    mount = MountedFile(path, proc)
    deadline = time.monotonic() + ready_timeout
    try:
        while not pidfile.exists():
            rc = proc.poll()
            if rc is not None:
                raise NbdfuseError(f"nbdfuse exited with status {rc} mounting {path}")
            if time.monotonic() > deadline:
                raise NbdfuseError(f"nbdfuse did not mount {path} within {ready_timeout:.0f} s")
            time.sleep(0.05)
    except BaseException:
        mount.unmount()
        raise
    finally:
        pidfile.unlink(missing_ok=True)
    return mount
