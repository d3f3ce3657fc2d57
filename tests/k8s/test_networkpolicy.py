"""The rendered NetworkPolicies allow exactly the flows vmbackup needs, and nothing else.

A small evaluator of the NetworkPolicy semantics (pod selectors, namespace selectors,
ipBlocks, ports; a pod selected by a policy of a direction is isolated in it; a flow needs
the source's egress and the destination's ingress) is run over the pods the builds render
plus the peers outside the namespace (vCenter, ESXi, Prometheus, DNS, the operators, the
internet).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.k8s.conftest import Build

NS = "vmbackup"
# vSphere addresses inside (and one outside) each build's vmbackup-to-vsphere ipBlocks.
VSPHERE = {
    "dev": {"vcenter": "192.0.2.10", "esxi": "192.0.2.21"},
    "production": {"vcenter": "10.20.0.10", "esxi": "10.20.9.5"},
    "s3": {"vcenter": "192.0.2.10", "esxi": "192.0.2.21"},  # dev's
}


@dataclass(frozen=True)
class Peer:
    """One end of a connection: a pod (namespace, labels) or an address outside."""

    name: str
    namespace: str | None = None
    labels: dict[str, str] = field(default_factory=dict, hash=False)
    ip: str = "10.244.0.99"  # pod network, outside every ipBlock used


def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return False
    for k, v in selector.get("matchLabels", {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions", []):
        key, op, values = e["key"], e["operator"], e.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def peer_matches(rule_peer: dict[str, Any], policy_ns: str, p: Peer) -> bool:
    if "ipBlock" in rule_peer:
        block = rule_peer["ipBlock"]
        ip = ipaddress.ip_address(p.ip)
        if ip not in ipaddress.ip_network(block["cidr"]):
            return False
        return not any(ip in ipaddress.ip_network(c) for c in block.get("except", []))
    if p.namespace is None:
        return False  # an address outside the cluster matches only ipBlocks
    ns_sel = rule_peer.get("namespaceSelector")
    if ns_sel is not None:
        if not selects(ns_sel, {"kubernetes.io/metadata.name": p.namespace}):
            return False
    elif p.namespace != policy_ns:
        return False
    pod_sel = rule_peer.get("podSelector")
    return pod_sel is None or selects(pod_sel, p.labels)


def port_matches(ports: list[dict[str, Any]] | None, proto: str, port: int) -> bool:
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != proto:
            continue
        if "port" not in p:
            return True
        assert isinstance(p["port"], int), f"named port {p['port']!r}: evaluator knows numbers"
        if p["port"] <= port <= p.get("endPort", p["port"]):
            return True
    return False


def _direction_allows(
    policies: list[dict[str, Any]], pod: Peer, other: Peer, proto: str, port: int, egress: bool
) -> bool:
    kind, key, peers = ("Egress", "egress", "to") if egress else ("Ingress", "ingress", "from")
    mine = [
        p
        for p in policies
        if p["metadata"].get("namespace") == pod.namespace
        and kind in p["spec"].get("policyTypes", ["Ingress"])
        and selects(p["spec"]["podSelector"], pod.labels)
    ]
    if not mine:
        return True  # not isolated in this direction
    for pol in mine:
        for rule in pol["spec"].get(key, []):
            if not port_matches(rule.get("ports"), proto, port):
                continue
            rule_peers = rule.get(peers)
            if not rule_peers or any(
                peer_matches(rp, pol["metadata"]["namespace"], other) for rp in rule_peers
            ):
                return True
    return False


def allowed(build: Build, src: Peer, dst: Peer, port: int, proto: str = "TCP") -> bool:
    policies = build.all("NetworkPolicy")
    out_ok = src.namespace != NS or _direction_allows(policies, src, dst, proto, port, True)
    in_ok = dst.namespace != NS or _direction_allows(policies, dst, src, proto, port, False)
    return out_ok and in_ok


def vmbackup_pods(build: Build) -> dict[str, Peer]:
    """One peer per rendered workload (pod template labels), by component."""
    pods: dict[str, Peer] = {}
    for obj, tpl in build.workloads():
        labels = tpl["metadata"]["labels"]
        pods.setdefault(
            f"{labels['app.kubernetes.io/component']}:{obj['metadata']['name']}",
            Peer(obj["metadata"]["name"], NS, dict(labels)),
        )
    return pods


def rabbitmq_pod(build: Build) -> Peer:
    (rmq,) = build.all("RabbitmqCluster")
    name = rmq["metadata"]["name"]
    # The labels the RabbitMQ cluster operator puts on the cluster's pods.
    labels = {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/component": "rabbitmq",
        "app.kubernetes.io/part-of": "rabbitmq",
    }
    return Peer(f"{name}-server-0", NS, labels)


PROMETHEUS = Peer("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"})
KUBE_DNS = Peer("coredns", "kube-system", {"k8s-app": "kube-dns"})
OPERATOR = Peer("operator", "rabbitmq-system", {"app.kubernetes.io/name": "rabbitmq-operator"})
STRANGER = Peer("stranger", "other-team", {"app": "web"})
INTERNET = Peer("internet", ip="203.0.113.7")


def _by_component(build: Build, *components: str) -> list[Peer]:
    return [p for k, p in vmbackup_pods(build).items() if k.split(":")[0] in components]


def test_every_pod_is_isolated_both_ways(build: Build) -> None:
    """A default deny covers every pod of the namespace, whatever its labels."""
    odd = Peer("odd", NS, {"app": "something-new"})
    assert not allowed(build, odd, INTERNET, 443)
    assert not allowed(build, STRANGER, odd, 80)
    assert not allowed(build, PROMETHEUS, odd, 9400)


def test_every_vmbackup_pod_resolves_names(build: Build) -> None:
    for pod in [*vmbackup_pods(build).values(), rabbitmq_pod(build)]:
        assert allowed(build, pod, KUBE_DNS, 53, "UDP"), pod.name
        assert allowed(build, pod, KUBE_DNS, 53, "TCP"), pod.name


def test_services_reach_the_broker_and_jobs_do_not(build: Build) -> None:
    rmq = rabbitmq_pod(build)
    services = _by_component(build, "coordinator", "proxy", "writer")
    assert {p.labels["app.kubernetes.io/component"] for p in services} == {
        "coordinator",
        "proxy",
        "writer",
    }
    for pod in services:
        assert allowed(build, pod, rmq, 5672), pod.name
        assert not allowed(build, pod, rmq, 15672), f"{pod.name}: management API"
    for pod in _by_component(build, "repo-init", "verify", "maintenance"):
        assert not allowed(build, pod, rmq, 5672), f"{pod.name} needs no broker"


def test_only_coordinator_and_proxies_reach_vsphere(build: Build) -> None:
    addr = VSPHERE[build.name]
    vcenter = Peer("vcenter", ip=addr["vcenter"])
    esxi = Peer("esxi", ip=addr["esxi"])
    for pod in _by_component(build, "coordinator", "proxy"):
        assert allowed(build, pod, vcenter, 443), pod.name
    for pod in _by_component(build, "proxy"):
        assert allowed(build, pod, esxi, 443), f"{pod.name}: datastore HTTP"
        assert allowed(build, pod, esxi, 902), f"{pod.name}: NFC"
    for pod in vmbackup_pods(build).values():
        assert not allowed(build, pod, INTERNET, 443), f"{pod.name} reaches the internet"
        assert not allowed(build, pod, vcenter, 22), f"{pod.name}: ssh to vCenter"
    for pod in _by_component(build, "writer", "repo-init", "verify", "maintenance"):
        assert not allowed(build, pod, vcenter, 443), f"{pod.name} reaches vCenter"


def test_nothing_inbound_but_metrics(build: Build) -> None:
    pods = vmbackup_pods(build)
    for pod in _by_component(build, "coordinator", "proxy", "writer"):
        assert allowed(build, PROMETHEUS, pod, 9400), pod.name
        assert not allowed(build, PROMETHEUS, pod, 8080), pod.name
        assert not allowed(build, STRANGER, pod, 9400), pod.name
        for other in pods.values():
            assert not allowed(build, other, pod, 9400), f"{other.name} -> {pod.name}"


def test_only_proxies_reach_the_writers_chunk_streams(build: Build) -> None:
    writers = _by_component(build, "writer")
    for w in writers:
        for proxy in _by_component(build, "proxy"):
            assert allowed(build, proxy, w, 7071), f"{proxy.name} -> {w.name}"
            assert not allowed(build, proxy, w, 7072), f"{proxy.name} -> {w.name}: other port"
        others = _by_component(build, "coordinator", "writer", "repo-init", "verify")
        for other in [*others, STRANGER, PROMETHEUS, rabbitmq_pod(build)]:
            assert not allowed(build, other, w, 7071), f"{other.name} -> {w.name}"


def test_broker_ingress(build: Build) -> None:
    rmq = rabbitmq_pod(build)
    peer = Peer("vmbackup-rabbitmq-server-1", NS, rmq.labels)
    assert allowed(build, peer, rmq, 25672), "inter-node traffic"
    assert allowed(build, peer, rmq, 4369), "epmd"
    assert allowed(build, OPERATOR, rmq, 15672), "the operators manage users and vhosts"
    assert allowed(build, PROMETHEUS, rmq, 15692), "rabbitmq_prometheus"
    assert not allowed(build, STRANGER, rmq, 5672)
    assert not allowed(build, PROMETHEUS, rmq, 5672)


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1"]}]}, {}, False),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {}, True),
        ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"a": ""}, True),
        ({}, {"anything": "x"}, True),
    ],
)
def test_evaluator_selectors(
    selector: dict[str, Any], labels: dict[str, str], expected: bool
) -> None:
    assert selects(selector, labels) is expected


def test_only_the_repository_users_reach_s3(builds: dict[str, Build]) -> None:
    """k8s/overlays/s3: the pods that open the repository reach the S3 endpoint on 443;
    the proxies do not, and nothing reaches it on another port. Elsewhere nobody does."""
    s3 = Peer("s3-endpoint", ip="198.51.100.20")
    build = builds["s3"]
    users = _by_component(build, "writer", "coordinator", "repo-init", "verify", "maintenance")
    assert len(users) == 5
    for pod in users:
        assert allowed(build, pod, s3, 443), pod.name
        assert not allowed(build, pod, s3, 22), pod.name
    for pod in _by_component(build, "proxy"):
        assert not allowed(build, pod, s3, 443), f"{pod.name}: proxies never talk to S3"
    for pod in _by_component(builds["dev"], "writer"):
        assert not allowed(builds["dev"], pod, s3, 443), "dev keeps its repository on a volume"
