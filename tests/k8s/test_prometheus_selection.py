"""A kube-prometheus-stack install loads vmbackup's monitors and rules.

The chart's Prometheus selects ServiceMonitors, PodMonitors and PrometheusRules by the label
`release: <Helm release name>` unless its *SelectorNilUsesHelmValues values are turned off
(charts/kube-prometheus-stack/templates/prometheus/prometheus.yaml); each overlay sets that
label in one `labels` entry, defaulting to the release name the chart's README installs.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s.conftest import BUILDS, K8S, Build, kustomize

DEFAULT_RELEASE = "kube-prometheus-stack"
SELECTED = ("ServiceMonitor", "PodMonitor", "PrometheusRule")


def release_labels(docs: list[dict[str, Any]]) -> dict[str, str]:
    """kind/name -> the release label of every object that has one."""
    out = {}
    for d in docs:
        labels = d["metadata"].get("labels") or {}
        if "release" in labels:
            out[f"{d['kind']}/{d['metadata']['name']}"] = labels["release"]
    return out


def test_selected_kinds_carry_the_default_release(build: Build) -> None:
    expected = {f"{k}/{d['metadata']['name']}" for k in SELECTED for d in build.all(k)}
    assert {k.split("/")[0] for k in expected} == set(SELECTED), f"{build.name}: kinds missing"
    # Exactly those: a release label elsewhere would tell a reader Helm owns the object.
    assert release_labels(build.docs) == dict.fromkeys(expected, DEFAULT_RELEASE)


@pytest.mark.parametrize("overlay", sorted(BUILDS))
def test_release_is_changed_in_one_place(overlay: str, tmp_path: Path) -> None:
    """One edit of the overlay's kustomization relabels every monitor and rule."""
    tree = tmp_path / "k8s"
    shutil.copytree(K8S, tree)
    path = tree / BUILDS[overlay].relative_to(K8S) / "kustomization.yaml"
    k = yaml.safe_load(path.read_text(encoding="utf-8"))
    if "labels" not in k:  # an overlay of an overlay (s3 of dev): the one it builds on
        (base,) = k["resources"]
        path = (path.parent / base).resolve() / "kustomization.yaml"
        k = yaml.safe_load(path.read_text(encoding="utf-8"))
    (entry,) = [e for e in k["labels"] if "release" in e["pairs"]]
    assert {f["kind"] for f in entry["fields"]} == set(SELECTED)
    entry["pairs"]["release"] = "monitoring-site-a"
    path.write_text(yaml.safe_dump(k), encoding="utf-8")
    found = release_labels(kustomize(path.parent))
    assert found and set(found.values()) == {"monitoring-site-a"}, found
    assert {key.split("/")[0] for key in found} == set(SELECTED)
