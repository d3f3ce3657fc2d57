"""The production nbdkit command line: nbdkit's vddk plugin exposing one snapshot disk.

VDDK cannot run here (proprietary, needs a real vCenter); tests check exactly what is built.
See nbdkit-vddk-plugin(1) for the parameters.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from common.redact import redact_url
from common.snapshot_disk import SnapshotDisk
from proxy_worker.errors import ConfigError, TaskError
from proxy_worker.settings import NbdSettings, VCenterAccess
from proxy_worker.transports.base import split_disk_file


def vddk_command(
    source: SnapshotDisk,
    vc: VCenterAccess,
    nbd: NbdSettings,
    password_file: str,
    *,
    write: bool = False,
) -> list[str]:
    """argv for ``nbdkit -s`` (libnbd connect_command talks over stdin/stdout).

    ``password_file`` holds the password (nbdkit reads it: it never appears in argv/ps).
    A backup reads a snapshot's disk, read-only; ``write`` (restore-vm) opens the disk of
    a powered-off VM itself, writable and with no snapshot.
    """
    server = urlsplit(vc.url).hostname
    if not server:
        raise ConfigError(f"vCenter url {redact_url(vc.url)!r} has no host name")
    if not vc.user or not password_file:
        raise ConfigError(f"vCenter {vc.name!r}: the vddk transport needs a user and a password")
    thumb = nbd.vddk_thumbprints.get(vc.name) or vc.vddk_thumbprint or vc.thumbprint
    if not thumb:
        raise ConfigError(f"vCenter {vc.name!r}: the vddk transport needs a thumbprint")
    if not source.vm_moref.startswith("vm-") or not (write or source.snapshot_moref):
        raise TaskError(
            f"task has vm_moref={source.vm_moref!r} snapshot_moref={source.snapshot_moref!r}; "
            "the vddk transport needs both"
        )
    split_disk_file(source.disk_file)  # validates the "[ds] path" form
    argv = [nbd.nbdkit, "-s", "--exit-with-parent"]
    if not write:
        argv.append("-r")  # a backup never writes to the snapshot
    argv += [
        "vddk",
        f"libdir={nbd.vddk_libdir}",
        f"server={server}",
        f"user={vc.user}",
        f"password=+{os.path.abspath(password_file)}",
        f"thumbprint={thumb}",
        f"vm=moref={source.vm_moref}",
    ]
    if not write:
        argv.append(f"snapshot={source.snapshot_moref}")
    argv.append(f"transports={nbd.vddk_transports}")
    port = urlsplit(vc.url).port
    if port and port != 443:
        argv.append(f"port={port}")
    if nbd.vddk_config:
        argv.append(f"config={nbd.vddk_config}")
    # file= is the vmdk descriptor as the snapshot names it; argv needs no shell quoting.
    argv.append(f"file={source.disk_file}")
    return argv
