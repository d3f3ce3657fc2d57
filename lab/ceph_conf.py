"""The lab's one-node Ceph: its ceph.conf and the paths inside its data directory.

Everything lives under one data directory (``CephPaths``): the config, one keyring per
daemon (``keyring = $D/$name.keyring``), the mon's store, the OSD's, pid files, admin
sockets and logs. The settings are the ones a single OSD on a shared disk needs (see
../shared/design/object-storage-facts.md for why each trap is here): pools of size 1,
few placement groups (radosgw makes about seven pools on its first start), the mon's
free-space warning off, and a memstore OSD that writes its data out on a clean stop.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MON_ID = "a"
OSD_ID = 0
RGW_NAME = "client.rgw.a"
OBJECTSTORES = ("memstore", "bluestore")


@dataclass(frozen=True)
class CephPaths:
    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "ceph.conf"

    @property
    def state(self) -> Path:
        """JSON: ports, objectstore, whether the bootstrap finished (lab/ceph_rgw.py)."""
        return self.root / "state.json"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def log(self) -> Path:
        return self.root / "log"

    @property
    def monmap(self) -> Path:
        return self.root / "monmap"

    @property
    def tls_cert(self) -> Path:
        """The gateway's self-signed certificate (IP 127.0.0.1 only): its own CA file."""
        return self.root / "rgw-tls.crt"

    @property
    def tls_key(self) -> Path:
        return self.root / "rgw-tls.key"

    @property
    def credentials(self) -> Path:
        """The S3 user's keys, AWS credentials-file format, mode 0600."""
        return self.root / "s3-credentials"

    def keyring(self, name: str) -> Path:
        return self.root / f"{name}.keyring"

    def pid_file(self, name: str) -> Path:
        return self.run / f"{name}.pid"


def ceph_conf(
    paths: CephPaths, fsid: str, mon_port: int, rgw_port: int, tls_port: int, objectstore: str
) -> str:
    """ceph.conf for the lab: one ``key = value`` a line (ceph.conf takes no more)."""
    if objectstore not in OBJECTSTORES:
        raise ValueError(f"objectstore {objectstore!r}: not one of {', '.join(OBJECTSTORES)}")
    d = paths.root
    lines = [
        "[global]",
        f"fsid = {fsid}",
        f"mon host = v2:127.0.0.1:{mon_port}",
        f"mon initial members = {MON_ID}",
        "ms bind msgr1 = false",
        "ms bind ipv4 = true",
        "public addr = 127.0.0.1",
        "auth cluster required = cephx",
        "auth service required = cephx",
        "auth client required = cephx",
        "auth allow insecure global id reclaim = false",
        f"keyring = {d}/$name.keyring",
        f"run dir = {paths.run}",
        f"admin socket = {paths.run}/$name.asok",
        f"pid file = {paths.run}/$name.pid",
        f"log file = {paths.log}/$name.log",
        f"mon data = {d}/mon/$id",
        f"osd data = {d}/osd/$id",
        f"osd objectstore = {objectstore}",
        # memstore: data in RAM, written to osd data only on a clean stop
        "osd fast shutdown = false",
        "memstore device bytes = 4294967296",
        f"bluestore block path = {d}/osd-$id.block",  # not in osd data: mkfs links it there
        "bluestore block create = true",
        "bluestore block size = 10737418240",  # a sparse file: 10 GiB nominal
        "bluestore fsck on mkfs = false",
        "osd pool default size = 1",
        "osd pool default min size = 1",
        "mon allow pool size one = true",
        "mon warn on pool no redundancy = false",
        "osd pool default pg num = 8",
        "osd pool default pgp num = 8",
        "mon max pg per osd = 1000",
        "osd crush chooseleaf type = 0",
        # after a restart a PG waits out its read lease (ratio x heartbeat grace = 16 s)
        # before it serves: one OSD has no peer whose reads it could contradict
        "osd pool default read lease ratio = 0.05",
        # the disk is shared with everything else here: no warning at 70 % used
        "mon data avail warn = 1",
        "mon data avail crit = 0",
        # a lab: no memory target fights over the machine
        "osd memory target = 939524096",
        "rgw enable usage log = false",
        "",
        f"[{RGW_NAME}]",
        # tcp_nodelay: without it each small GET waits out a delayed ACK (~20 GETs/s)
        f"rgw frontends = beast endpoint=127.0.0.1:{rgw_port} ssl_endpoint=127.0.0.1:{tls_port}"
        f" ssl_certificate={paths.tls_cert} ssl_private_key={paths.tls_key} tcp_nodelay=1",
        f"rgw data = {d}/rgw",
        "rgw dns name = 127.0.0.1",
        # a bucket's quota (the full-bucket test) is checked against fresh stats, not a
        # cache; never the user-quota sync intervals = 0: their threads then list every
        # user in a busy loop (and the gateway starts 15 s later)
        "rgw bucket quota ttl = 0",
        # deleted objects' tails (all past the first 4 MiB) go to RGW's gc, by default
        # for 2 hours: memstore would fill up (and a full OSD blocks every write)
        "rgw gc obj min wait = 2",
        "rgw gc processor period = 5",
        "",
    ]
    return "\n".join(lines)
