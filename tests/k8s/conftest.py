"""Builds of k8s/ (kustomize) shared by the tests of this directory.

The builds run tools/bin/kubectl (`kubectl kustomize`): kubectl 1.27.1 with kustomize
v5.0.1, the oldest docs/kubernetes.md supports, which `make setup` installs
(scripts/install_kubectl.py), never the kubectl on PATH: Debian 12's (1.20, kustomize
v2.0.3) reads none of the fields k8s/ uses, and a newer one would let a field the minimum
lacks slip by. To try another kubectl by hand: `VMBACKUP_KUBECTL=/path/to/kubectl`.
promtool comes from Debian's prometheus package (scripts/debian-packages.txt). A missing
tool fails the tests, it never skips them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
# The deployable builds (the base alone has no proxy group).
BUILDS = {
    "dev": K8S / "overlays" / "dev",
    "production": K8S / "overlays" / "production",
    "s3": K8S / "overlays" / "s3",  # dev with its repository on S3 (no repository volume)
}


def require_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed: the k8s tests need it (Debian package {package}; "
            "`make setup` installs it from scripts/debian-packages.txt)",
            pytrace=False,
        )
    return path


@dataclass
class Build:
    """The documents of one `kubectl kustomize` build, with look-ups."""

    name: str
    docs: list[dict[str, Any]]
    by_kind: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for d in self.docs:
            self.by_kind.setdefault(d["kind"], []).append(d)

    def all(self, kind: str) -> list[dict[str, Any]]:
        return self.by_kind.get(kind, [])

    def get(self, kind: str, name: str) -> dict[str, Any]:
        for d in self.all(kind):
            if d["metadata"]["name"] == name:
                return d
        raise AssertionError(f"{self.name}: no {kind} named {name}")

    def configmap(self, prefix: str) -> dict[str, Any]:
        """A generated ConfigMap by its name before kustomize added the hash suffix."""
        found = [
            d
            for d in self.all("ConfigMap")
            if d["metadata"]["name"] == prefix or d["metadata"]["name"].startswith(prefix + "-")
        ]
        assert len(found) == 1, f"{self.name}: expected one ConfigMap {prefix}, got {found}"
        return found[0]

    def workloads(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(object, pod template) of every Deployment, StatefulSet, Job and CronJob."""
        out = []
        for kind in ("Deployment", "StatefulSet", "Job"):
            out += [(d, d["spec"]["template"]) for d in self.all(kind)]
        out += [(d, d["spec"]["jobTemplate"]["spec"]["template"]) for d in self.all("CronJob")]
        return out

    def role(self, component: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        return [
            (obj, tpl)
            for obj, tpl in self.workloads()
            if tpl["metadata"]["labels"].get("app.kubernetes.io/component") == component
            and obj["kind"] in ("Deployment", "StatefulSet")
        ]


def kubectl() -> str:
    """The pinned kubectl (or VMBACKUP_KUBECTL), failing with what to run when it is absent."""
    path = Path(os.environ.get("VMBACKUP_KUBECTL") or ROOT / "tools" / "bin" / "kubectl")
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"{path} is not installed: the k8s tests build with it (`make setup` or "
            "`.venv/bin/python -m scripts.install_kubectl` installs kubectl 1.27.1)",
            pytrace=False,
        )
    return str(path)


def kustomize_run(path: Path) -> subprocess.CompletedProcess[str]:
    """`kubectl kustomize path`, asserted to succeed; stderr holds kustomize's warnings."""
    res = subprocess.run(
        [kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert res.returncode == 0, f"kubectl kustomize {path} failed:\n{res.stderr}"
    return res


def kustomize(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(kustomize_run(path).stdout) if d]


@pytest.fixture(scope="session")
def builds() -> dict[str, Build]:
    return {name: Build(name, kustomize(path)) for name, path in BUILDS.items()}


@pytest.fixture(params=sorted(BUILDS))
def build(request: pytest.FixtureRequest, builds: dict[str, Build]) -> Build:
    return builds[request.param]


@pytest.fixture(scope="session")
def promtool() -> str:
    return require_tool("promtool", "prometheus")
