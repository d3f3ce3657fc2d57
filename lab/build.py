"""Builds the vcsim-lab Go program from Debian's golang-go and govmomi packages."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from lab.spec import LabError

SOURCE_DIR = Path(__file__).resolve().parent / "vcsim"
BIN_DIR = SOURCE_DIR / "bin"
BINARY = BIN_DIR / "vcsim-lab"
# Where Debian's golang-github-vmware-govmomi-dev puts the simulator package.
SYSTEM_GOPATH = Path("/usr/share/gocode")
SIMULATOR_PKG = SYSTEM_GOPATH / "src/github.com/vmware/govmomi/simulator"


def sources() -> list[Path]:
    return sorted(SOURCE_DIR.glob("*.go"))


def needs_build() -> bool:
    """True when the binary is missing or older than any .go source."""
    if not BINARY.exists():
        return True
    built = BINARY.stat().st_mtime
    return any(src.stat().st_mtime > built for src in sources())


def _go_cache() -> str:
    if os.environ.get("GOCACHE"):
        return os.environ["GOCACHE"]
    home_cache = Path.home() / ".cache" / "go-build"
    try:
        home_cache.mkdir(parents=True, exist_ok=True)
        if os.access(home_cache, os.W_OK):
            return str(home_cache)
    except OSError:
        pass
    return str(BIN_DIR / ".gocache")


def build(force: bool = False) -> Path:
    """Build the binary if needed; safe when several processes call it at once."""
    if not force and not needs_build():
        return BINARY
    go = shutil.which("go")
    if go is None:
        raise LabError("cannot build the lab: `go` not found (install golang-go: make setup)")
    if not SIMULATOR_PKG.is_dir():
        raise LabError(
            f"cannot build the lab: {SIMULATOR_PKG} missing "
            "(install golang-github-vmware-govmomi-dev: make setup)"
        )
    BIN_DIR.mkdir(parents=True, exist_ok=True)
    with open(BIN_DIR / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building right now
        if not force and not needs_build():
            return BINARY
        gopath_extra = BIN_DIR / ".gopath"
        gopath_extra.mkdir(exist_ok=True)
        env = dict(
            os.environ,
            GO111MODULE="off",
            GOPATH=f"{SYSTEM_GOPATH}:{gopath_extra}",
            GOCACHE=_go_cache(),
            GOFLAGS="",
        )
        fd, tmp = tempfile.mkstemp(prefix=".vcsim-lab-", dir=BIN_DIR)
        os.close(fd)
        try:
            proc = subprocess.run(
                [go, "build", "-o", tmp, "."],
                cwd=SOURCE_DIR,
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                raise LabError(f"go build of the lab failed:\n{proc.stderr.strip()}")
            os.chmod(tmp, 0o755)
            os.replace(tmp, BINARY)  # atomic: a concurrent start never sees half a file
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return BINARY
