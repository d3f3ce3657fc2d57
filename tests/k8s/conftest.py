"""Builds of k8s/ (kustomize) shared by the tests of this directory.

kubectl and promtool are required, never skipped: `make setup` installs them (Debian
kubernetes-client and prometheus, listed in scripts/debian-packages.txt). The builds run
the `kubectl` found on PATH, whatever its version.

The manifests are kept compatible with Debian 12's kubectl 1.20.2 (embedded kustomize
v2.0.3, what CI and new users get) as well as current kubectl/kustomize (v5), and both
must give the same objects (generated names differ only in their hash suffix, whose
algorithm changed). test_kustomize_compat.py checks statically that every kustomization
uses only what v2.0.3 understands. To check the builds themselves with both versions:

    dpkg-deb -x /var/cache/apt/archives/kubernetes-client_*.deb /tmp/kc   # Debian 12 kubectl
    for k in /tmp/kc/usr/bin/kubectl kubectl; do
        PATH=$(dirname $(command -v $k)):$PATH .venv/bin/python -m pytest tests/k8s -q
    done

and compare `kubectl kustomize k8s/overlays/production` from both (docs/kubernetes.md,
"kubectl versions").
"""

from __future__ import annotations

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


def kustomize(path: Path) -> list[dict[str, Any]]:
    kubectl = require_tool("kubectl", "kubernetes-client")
    res = subprocess.run(
        [kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert res.returncode == 0, f"kubectl kustomize {path} failed:\n{res.stderr}"
    return [d for d in yaml.safe_load_all(res.stdout) if d]


@pytest.fixture(scope="session")
def builds() -> dict[str, Build]:
    return {name: Build(name, kustomize(path)) for name, path in BUILDS.items()}


@pytest.fixture(params=sorted(BUILDS))
def build(request: pytest.FixtureRequest, builds: dict[str, Build]) -> Build:
    return builds[request.param]


@pytest.fixture(scope="session")
def promtool() -> str:
    return require_tool("promtool", "prometheus")
