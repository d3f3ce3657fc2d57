"""Alert rules (promtool), the generated PrometheusRule and dashboard, and the metric names
they use: every vmbackup_* name is declared in a metrics module (common/metrics.py and each
role's metrics.py), every other name is one of the external metrics listed here."""

from __future__ import annotations

import ast
import importlib
import json
import re
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from tests.k8s.conftest import K8S, ROOT, Build

MON = K8S / "monitoring"
RULES = MON / "vmbackup.rules.yaml"

# Metrics from outside vmbackup the rules, dashboard and autoscaler may use (documented in
# the header of vmbackup.rules.yaml and in docs/kubernetes.md).
EXTERNAL = {
    "up",  # Prometheus
    "rabbitmq_detailed_queue_messages",  # rabbitmq_prometheus /metrics/detailed
    "rabbitmq_detailed_queue_messages_ready",
    "rabbitmq_detailed_queue_consumers",
    "rabbitmq_alarms_free_disk_space_watermark",  # rabbitmq_prometheus /metrics
    "rabbitmq_alarms_memory_used_watermark",
    "kubelet_volume_stats_available_bytes",  # kubelet
    "kubelet_volume_stats_capacity_bytes",
    "kube_job_status_failed",  # kube-state-metrics
    "kube_pod_container_status_restarts_total",
}
PROMQL_WORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "inf",
    "nan",
    # aggregations (may be followed by "by (...)" rather than "(")
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
}


# The shared families (common/) and each role's own (coordinator/, proxy_worker/,
# repository_writer/, repository/): scripts/gen_metrics_docs.py lists the same modules.
METRICS_MODULES = tuple(sorted(ROOT.glob("*/metrics.py")))


def metric_calls(
    paths: tuple[Path, ...] = METRICS_MODULES,
) -> Iterator[tuple[str, str, ast.Call]]:
    """(kind, name, call) of every Counter/Gauge/Histogram/Summary/Info("NAME", ...)."""
    for p in paths:
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            kind = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            first = node.args[0]
            if kind in {"Counter", "Gauge", "Histogram", "Summary", "Info"} and isinstance(
                first, ast.Constant
            ):
                yield kind, str(first.value), node


def declared_metrics(paths: tuple[Path, ...] = METRICS_MODULES) -> dict[str, str]:
    """Metric name -> kind for every metric declared in the modules."""
    return {name: kind for kind, name, _call in metric_calls(paths)}


def exposed_names(declared: dict[str, str]) -> set[str]:
    """The series names Prometheus sees for the declared metrics."""
    names: set[str] = set()
    for name, kind in declared.items():
        names.add(name)
        if kind in ("Histogram", "Summary"):
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        if kind == "Counter" and not name.endswith("_total"):
            names.add(f"{name}_total")  # prometheus_client appends it
    return names


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (a small lexer, enough for our rules)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    s = re.sub(r"\{[^}]*\}", "", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", "", s)  # range and subquery durations
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", s)
    s = re.sub(r"\boffset\s+\w+", "", s)
    names = set()
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", s):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def rule_exprs() -> list[str]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [r["expr"] for g in doc["groups"] for r in g["rules"]]


@cache
def generator() -> ModuleType:
    return importlib.import_module("k8s.monitoring.generate")


def dashboard_exprs() -> list[str]:
    dash = json.loads((MON / "dashboard.json").read_text(encoding="utf-8"))
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def test_promtool_check_rules(promtool: str) -> None:
    res = subprocess.run(
        [promtool, "check", "rules", str(RULES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_promtool_unit_tests(promtool: str) -> None:
    tests = sorted((MON / "tests").glob("*.yaml"))
    assert tests
    text = "".join(t.read_text(encoding="utf-8") for t in tests)
    for alert in ("VmbackupVMNotBackedUp", "VmbackupDLQNotEmpty"):
        assert f"alertname: {alert}" in text, f"no promtool unit test for {alert}"
    res = subprocess.run(
        [promtool, "test", "rules", *map(str, tests)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=MON / "tests",
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_generated_files_are_up_to_date() -> None:
    for path, text in generator().outputs().items():
        assert path.read_text(encoding="utf-8") == text, (
            f"{path.name} is stale: run .venv/bin/python -m k8s.monitoring.generate"
        )


def test_prometheusrule_carries_the_rules() -> None:
    from tests.k8s.conftest import kustomize

    docs = kustomize(MON)
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    plain = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    assert rule["spec"]["groups"] == plain["groups"]
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    json.loads(cm["data"]["dashboard.json"])


def test_every_alert_is_documented() -> None:
    doc = (ROOT / "docs" / "kubernetes.md").read_text(encoding="utf-8")
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    for g in rules["groups"]:
        for r in g["rules"]:
            assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
            assert {"summary", "description", "runbook"} <= set(r["annotations"]), r["alert"]
            anchor = r["annotations"]["runbook"].split("#", 1)[1]
            assert f"### {anchor}".lower() in doc.lower(), f"docs/kubernetes.md lacks {anchor}"


def test_lexer_finds_names() -> None:
    expr = (
        'sum by (policy) (increase(vmbackup_a_total{result="x"}[3h])) > 0 or '
        "max(b_metric offset 3h) unless on (queue) c:rule / clamp_min(d, 1) > 26 * 3600"
    )
    assert metric_names(expr) == {"vmbackup_a_total", "b_metric", "c:rule", "d"}


@pytest.mark.parametrize("source", ["rules", "dashboard", "autoscaling"])
def test_metric_names_are_declared(source: str, builds: dict[str, Build]) -> None:
    if source == "rules":
        exprs = rule_exprs()
    elif source == "dashboard":
        exprs = dashboard_exprs()
    else:
        exprs = [
            t["metadata"]["query"]
            for b in builds.values()
            for so in b.all("ScaledObject")
            for t in so["spec"]["triggers"]
        ]
    assert exprs
    known = exposed_names(declared_metrics())
    used = set().union(*(metric_names(e) for e in exprs))
    ours = {n for n in used if n.startswith("vmbackup_")}
    assert ours or source == "autoscaling"
    undeclared = ours - known
    assert not undeclared, f"{source} uses metrics declared in no metrics module: {undeclared}"
    foreign = used - ours - EXTERNAL
    assert not foreign, f"{source} uses metrics that are neither vmbackup's nor listed: {foreign}"


def test_declared_parser_sees_the_modules() -> None:
    assert {p.parent.name for p in METRICS_MODULES} == {
        "common",
        "coordinator",
        "proxy_worker",
        "repository_writer",
        "repository",
        "export",
    }
    declared = declared_metrics()
    assert declared["vmbackup_coordinator_last_success_timestamp_seconds"] == "Gauge"
    assert declared["vmbackup_proxy_task_seconds"] == "Histogram"
