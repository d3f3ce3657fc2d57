"""The Grafana dashboard's template variables, and every panel query scoped by them.

Every series selector of every panel carries the cluster and namespace variables, and the
vcenter and policy variables wherever its metric has that label (declared in
the metrics modules), so the dashboard shows one site, one vCenter or one policy when asked
and nothing is fixed to one namespace. Each variable lists the values of a label the
series really carry.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.k8s.conftest import K8S
from tests.k8s.test_monitoring import (
    EXTERNAL,
    METRICS_MODULES,
    exposed_names,
    metric_calls,
    metric_names,
)

DASHBOARD = K8S / "monitoring" / "dashboard.json"
# Labels Prometheus puts on every series whatever the metric: the Prometheus operator's
# target label namespace (the pod's namespace; kube-state-metrics' and the kubelet's
# series keep the object's own, kube-prometheus-stack scrapes them with honorLabels), and
# cluster, the external label multi-cluster set-ups (Thanos, Mimir, remote write) add.
TARGET_LABELS = {"namespace", "cluster"}
SCOPED = ("cluster", "namespace")
VARIABLE_NAMES = ("cluster", "namespace", "vcenter", "policy")
SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)\{([^}]*)\}")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
LABEL_VALUES = re.compile(r"label_values\((.+),\s*(\w+)\)")


def declared_labels(paths: tuple[Path, ...] = METRICS_MODULES) -> dict[str, set[str]]:
    """Metric name -> its label names, for every Counter/Gauge/Histogram/Summary call."""
    out: dict[str, set[str]] = {}
    for kind, name, call in metric_calls(paths):
        if kind == "Info":
            continue
        labels: ast.expr | None = call.args[2] if len(call.args) > 2 else None
        for kw in call.keywords:
            if kw.arg == "labelnames":
                labels = kw.value
        elts = labels.elts if isinstance(labels, ast.List | ast.Tuple) else []
        out[name] = {str(e.value) for e in elts if isinstance(e, ast.Constant)}
    return out


def labels_of(series: str, declared: dict[str, set[str]]) -> set[str]:
    """The declared labels of an exposed series name (_total, _bucket, ... stripped)."""
    for suffix in ("", "_total", "_bucket", "_sum", "_count"):
        if series.endswith(suffix) and series.removesuffix(suffix) in declared:
            return declared[series.removesuffix(suffix)] | (
                {"le"} if suffix == "_bucket" else set()
            )
    return set()


def selectors(expr: str) -> list[tuple[str, dict[str, tuple[str, str]]]]:
    """(metric, {label: (operator, value)}) of every selector with matchers in expr."""
    return [
        (
            m.group(1),
            {lm.group(1): (lm.group(2), lm.group(3)) for lm in MATCHER.finditer(m.group(2))},
        )
        for m in SELECTOR.finditer(expr)
    ]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def variables() -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard()["templating"]["list"]}


def panel_targets() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in dashboard()["panels"] for t in p.get("targets", [])]


def scope_problems(expr: str, declared: dict[str, set[str]]) -> list[str]:
    """Why expr is not scoped by the variables: each problem names the selector and label."""
    out = []
    bare = metric_names(SELECTOR.sub("", expr))
    out += [f"{name}: no label matchers" for name in sorted(bare)]
    for metric, matchers in selectors(expr):
        wanted = [*SCOPED] + [v for v in ("vcenter", "policy") if v in labels_of(metric, declared)]
        for var in wanted:
            if matchers.get(var) != ("=~", f"${var}"):
                out.append(f'{metric}: needs {var}=~"${var}", has {matchers.get(var)}')
        for label, (_op, value) in matchers.items():
            if label not in VARIABLE_NAMES and "$" in value:
                out.append(f"{metric}: {label} uses a variable")
    return out


def test_variables_present() -> None:
    found = variables()
    assert found["datasource"]["type"] == "datasource"
    assert found["datasource"]["query"] == "prometheus"
    names = [v["name"] for v in dashboard()["templating"]["list"]]
    assert names == ["datasource", *VARIABLE_NAMES], "the order the chained queries need"
    for name in VARIABLE_NAMES:
        v = found[name]
        assert v["type"] == "query" and v["datasource"]["uid"] == "${datasource}", name
        # "All" is ".*": it also matches series without the label (cluster in one cluster).
        assert v["includeAll"] and v["allValue"] == ".*" and v["multi"], name


@pytest.mark.parametrize("name", VARIABLE_NAMES)
def test_variable_lists_a_real_label(name: str) -> None:
    declared = declared_labels()
    query = variables()[name]["query"]
    m = LABEL_VALUES.fullmatch(query)
    assert m, f"{name}: {query} is not label_values(selector, label)"
    selector, label = m.groups()
    assert label == name, f"{name} lists the values of {label}"
    metric = selector.split("{", 1)[0]
    assert metric in exposed_names({n: "Gauge" for n in declared}) or metric in EXTERNAL
    assert label in TARGET_LABELS | labels_of(metric, declared), (
        f"{name}: {metric} has no label {label} (the metrics modules declare "
        f"{sorted(labels_of(metric, declared))})"
    )
    # A chained query narrows by the variables listed before it only.
    earlier = VARIABLE_NAMES[: VARIABLE_NAMES.index(name)]
    used = set(re.findall(r"\$(\w+)", selector))
    assert used <= set(earlier), f"{name} uses {used - set(earlier)}, not defined before it"


@pytest.mark.parametrize("title,expr", panel_targets(), ids=lambda x: str(x)[:40])
def test_panel_query_uses_the_variables(title: str, expr: str) -> None:
    found = scope_problems(expr, declared_labels())
    assert not found, f"{title}: " + "; ".join(found)


def test_every_variable_is_used() -> None:
    text = " ".join(expr for _title, expr in panel_targets())
    for name in VARIABLE_NAMES:
        assert f'=~"${name}"' in text, f"no panel uses ${name}"
    assert 'namespace="' not in text, "a panel is fixed to one namespace"


def test_scope_check_is_not_vacuous() -> None:
    declared = {"vmbackup_x": {"policy"}, "vmbackup_y": {"vcenter"}}
    found = scope_problems(
        'sum(rate(vmbackup_x_total{namespace="vmbackup"}[5m])) / vmbackup_y + up{job="a"}',
        declared,
    )
    assert 'vmbackup_x_total: needs cluster=~"$cluster", has None' in found
    assert "vmbackup_x_total: needs namespace=~\"$namespace\", has ('=', 'vmbackup')" in found
    assert 'vmbackup_x_total: needs policy=~"$policy", has None' in found
    assert "vmbackup_y: no label matchers" in found
    assert 'up: needs cluster=~"$cluster", has None' in found
