"""Every kustomization under k8s/ stays within what kustomize v2.0.3 understands.

Debian 12's kubectl 1.20.2 embeds kustomize v2.0.3 (CI and new users have it); current
kubectl embeds kustomize v5. These checks need neither version: they read the
kustomization files, so a feature only v5 knows (labels, components, inline patches,
per-generator options, directories under resources, ...) fails here whatever kubectl is on
PATH. How to build with both versions by hand: tests/k8s/conftest.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s.conftest import K8S, kustomize

# The Kustomization fields of kustomize v2.0.3 (each tried against kubectl 1.20.2). Not
# "patches": v2.0.3 reads it as patchesStrategicMerge, v5 as something else.
V2_FIELDS = {
    "apiVersion",
    "kind",
    "namespace",
    "namePrefix",
    "nameSuffix",
    "commonLabels",
    "commonAnnotations",
    "resources",
    "bases",
    "patchesStrategicMerge",
    "patchesJson6902",
    "configMapGenerator",
    "secretGenerator",
    "generatorOptions",
    "images",
    "vars",
    "configurations",
    "crds",
}
V2_GENERATOR_FIELDS = {"name", "namespace", "behavior", "files", "literals", "env"}
V2_GENERATOR_OPTIONS = {"labels", "annotations", "disableNameSuffixHash"}
V2_JSON6902_FIELDS = {"target", "path"}
V2_IMAGE_FIELDS = {"name", "newName", "newTag", "digest"}

KUSTOMIZATIONS = sorted(K8S.rglob("kustomization.yaml"))


def load(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict), f"{path}: not a mapping"
    return doc


def test_kustomizations_found() -> None:
    dirs = {p.parent.relative_to(K8S).as_posix() for p in KUSTOMIZATIONS}
    assert {"base", "proxy-group", "overlays/production", "monitoring"} <= dirs


@pytest.mark.parametrize("path", KUSTOMIZATIONS, ids=lambda p: str(p.parent.relative_to(K8S)))
def test_only_v2_fields(path: Path) -> None:
    k = load(path)
    where = path.relative_to(K8S)
    unknown = set(k) - V2_FIELDS
    assert not unknown, f"{where}: kustomize v2.0.3 (kubectl 1.20) rejects {sorted(unknown)}"
    here = path.parent
    # v2.0.3 loads directories only from bases, and files only from resources.
    for r in k.get("resources", []):
        assert (here / r).is_file(), f"{where}: resources entry {r} must be a file"
    for b in k.get("bases", []):
        assert (here / b / "kustomization.yaml").is_file(), f"{where}: base {b} is no kustomization"
    for p in k.get("patchesStrategicMerge", []):
        assert isinstance(p, str) and (here / p).is_file(), f"{where}: {p!r} must be a file path"
    for p in k.get("patchesJson6902", []):
        assert set(p) <= V2_JSON6902_FIELDS and "target" in p, f"{where}: {p}"
        assert (here / p["path"]).is_file(), f"{where}: {p['path']} missing"
    for g in k.get("configMapGenerator", []) + k.get("secretGenerator", []):
        extra = set(g) - V2_GENERATOR_FIELDS
        assert not extra, f"{where}: generator {g['name']}: {sorted(extra)} (generatorOptions)"
    assert set(k.get("generatorOptions", {})) <= V2_GENERATOR_OPTIONS, where
    for image in k.get("images", []):
        assert set(image) <= V2_IMAGE_FIELDS, f"{where}: {image}"


@pytest.mark.parametrize("path", KUSTOMIZATIONS, ids=lambda p: str(p.parent.relative_to(K8S)))
def test_every_kustomization_builds(path: Path) -> None:
    """Also the pieces (base, proxy-group, each rack), not only the deployable overlays."""
    assert kustomize(path.parent), f"{path.parent}: empty build"


def test_built_overlays_resolve_every_var(builds: dict[str, Any]) -> None:
    """$(VMBACKUP_CONFIG_MAP) (k8s/base's var for the proxy groups) never reaches the output."""
    for build in builds.values():
        text = yaml.safe_dump_all(build.docs)
        assert "$(VMBACKUP_" not in text, f"{build.name}: unresolved kustomize var"
        for sts in build.all("StatefulSet"):
            # kustomize v2.0.3's commonLabels adds a nameless volumeClaimTemplates entry.
            for t in sts["spec"].get("volumeClaimTemplates", []):
                assert t.get("metadata", {}).get("name"), f"{build.name}: nameless claim {t}"
