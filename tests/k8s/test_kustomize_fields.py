"""Every kustomization under k8s/ uses kustomize's current fields, none of the deprecated ones.

kustomize v5 (kubectl >= 1.27, the minimum docs/kubernetes.md names) still reads the
deprecated fields but warns, and a later release drops them. The static check reads the
files, so it holds whatever kubectl runs; the builds run the pinned kubectl 1.27.1
(kustomize v5.0.1, tests/k8s/conftest.py), so a field newer than the documented minimum
fails them, and they must print no warning.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from scripts.install_kubectl import KUBECTL_VERSION
from tests.k8s.conftest import K8S, ROOT, kubectl, kustomize_run

# Deprecated field -> its replacement (kustomize v5's `kustomize edit fix` rewrites them).
DEPRECATED = {
    "bases": "resources",
    "patchesStrategicMerge": "patches",
    "patchesJson6902": "patches",
    "vars": "replacements",
    "commonLabels": "labels",
    "imageTags": "images",
}
KINDS = {"Kustomization", "Component"}

KUSTOMIZATIONS = sorted(K8S.rglob("kustomization.yaml"))


def load(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(doc, dict), f"{path}: not a mapping"
    return doc


def problems(k: dict[str, Any], here: Path) -> list[str]:
    """What in one kustomization is deprecated or names a file that does not exist."""
    out = [f"{f}: deprecated, use {DEPRECATED[f]}" for f in sorted(set(k) & set(DEPRECATED))]
    want = "kustomize.config.k8s.io/" + ("v1alpha1" if k.get("kind") == "Component" else "v1beta1")
    if k.get("apiVersion") != want or k.get("kind") not in KINDS:
        out.append(f"apiVersion/kind {k.get('apiVersion')}/{k.get('kind')}: not a Kustomization")
    for r in k.get("resources", []):
        if not (here / r).is_file() and not (here / r / "kustomization.yaml").is_file():
            out.append(f"resources: {r} is neither a file nor a kustomization")
    for p in k.get("patches", []):
        if not isinstance(p, dict) or ("path" in p) == ("patch" in p):
            out.append(f"patches: {p} needs exactly one of path and patch")
        elif "path" in p and not (here / p["path"]).is_file():
            out.append(f"patches: {p['path']} missing")
    return out


def test_kustomizations_found() -> None:
    dirs = {p.parent.relative_to(K8S).as_posix() for p in KUSTOMIZATIONS}
    assert {"base", "proxy-group", "overlays/dev", "overlays/production", "monitoring"} <= dirs


@pytest.mark.parametrize("path", KUSTOMIZATIONS, ids=lambda p: str(p.parent.relative_to(K8S)))
def test_current_fields_only(path: Path) -> None:
    found = problems(load(path), path.parent)
    assert not found, f"{path.relative_to(K8S)}: " + "; ".join(found)


def test_checker_names_each_deprecated_field(tmp_path: Path) -> None:
    """The check above is not vacuous: an old-style kustomization fails it field by field."""
    (tmp_path / "a.yaml").write_text("{}\n", encoding="utf-8")
    old = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "bases": ["../base"],
        "commonLabels": {"a": "b"},
        "patchesStrategicMerge": ["a.yaml"],
        "patchesJson6902": [{"target": {"kind": "X", "name": "x"}, "path": "a.yaml"}],
        "vars": [{"name": "V", "objref": {"kind": "ConfigMap", "name": "c", "apiVersion": "v1"}}],
        "imageTags": [{"name": "x", "newTag": "1"}],
        "resources": ["a.yaml", "missing.yaml"],
        "patches": [{"path": "gone.yaml"}, {"target": {"kind": "X"}}],
    }
    found = "\n".join(problems(old, tmp_path))
    for field, new in DEPRECATED.items():
        assert f"{field}: deprecated, use {new}" in found
    assert "missing.yaml is neither" in found
    assert "gone.yaml missing" in found
    assert "needs exactly one of path and patch" in found


@pytest.mark.parametrize("path", KUSTOMIZATIONS, ids=lambda p: str(p.parent.relative_to(K8S)))
def test_builds_without_warnings(path: Path) -> None:
    """Also the pieces (base, proxy-group, each rack, monitoring), not only the overlays;
    a component builds only inside a kustomization (k8s/overlays/s3 uses the one there is)."""
    if load(path).get("kind") == "Component":
        path = K8S / "overlays" / "s3" / "kustomization.yaml"
        assert "../../components/s3-repository" in load(path)["components"]
    res = kustomize_run(path.parent)
    assert res.stdout.strip(), f"{path.parent}: empty build"
    assert not res.stderr.strip(), f"{path.parent}: kustomize warns:\n{res.stderr}"


def test_kubectl_is_the_documented_minimum() -> None:
    """The kubectl make setup pins is the oldest docs/kubernetes.md supports, and the one
    the builds run embeds kustomize v5."""
    res = subprocess.run(
        [kubectl(), "version", "--client", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(res.stdout)["kustomizeVersion"].startswith("v5."), res.stdout
    doc = (ROOT / "docs" / "kubernetes.md").read_text(encoding="utf-8")
    stated = re.findall(r"kubectl ≥ (1\.\d+)", doc)
    assert stated, "docs/kubernetes.md states no minimum kubectl (kubectl ≥ 1.N)"
    pinned = KUBECTL_VERSION.removeprefix("v").rsplit(".", 1)[0]
    assert set(stated) == {pinned}, f"docs say kubectl ≥ {stated}, make setup pins {pinned}"
