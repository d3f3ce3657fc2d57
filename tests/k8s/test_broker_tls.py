"""The production overlay speaks TLS to the broker everywhere; the dev overlay stays plain.

Rendered with `kubectl kustomize`: every role's broker.url is amqps:// to a name the
broker's cert-manager Certificate covers, with broker.ca_file mounted from that
Certificate's Secret (ca.crt only), require_tls on, the writers' chunk streams TLS "on",
and the RabbitmqCluster serving TLS only.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from tests.k8s.conftest import BUILDS, Build
from tests.k8s.test_config import mounted_secret_key
from tests.k8s.test_manifests import role_toml
from tests.k8s.test_networkpolicy import _by_component, allowed, rabbitmq_pod

ROLES = ("coordinator", "proxy", "writer")
CA_FILE = "/run/secrets/vmbackup/broker-ca/ca.crt"


def role_pods(build: Build) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(component, object, pod template) of every long-running role, at least one each."""
    out = [(c, obj, tpl) for c in ROLES for obj, tpl in build.role(c)]
    assert {c for c, _, _ in out} == set(ROLES), f"{build.name}: roles missing"
    return out


def covers(pattern: str, host: str) -> bool:
    """Whether a certificate DNS name (maybe a leftmost wildcard) matches ``host``."""
    if pattern.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == host


def test_production_roles_use_amqps_with_the_broker_ca(builds: dict[str, Build]) -> None:
    build = builds["production"]
    (cert,) = build.all("Certificate")
    secret = cert["spec"]["secretName"]
    for component, obj, tpl in role_pods(build):
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        broker = role_toml(build, tpl)["broker"]
        url = urlsplit(broker["url"])
        assert url.scheme == "amqps" and url.port == 5671, f"{where}: {broker['url']}"
        assert any(covers(n, url.hostname or "") for n in cert["spec"]["dnsNames"]), (
            f"{where}: the broker certificate does not cover {url.hostname}"
        )
        assert broker["require_tls"] is True, where
        assert broker["ca_file"] == CA_FILE, where
        # Mounted from the Certificate's Secret, and only its CA (never the broker's key).
        assert mounted_secret_key(build, tpl, CA_FILE) == (secret, "ca.crt"), where
        vols = [
            v for v in tpl["spec"]["volumes"] if v.get("secret", {}).get("secretName") == secret
        ]
        assert all([i["key"] for i in v["secret"]["items"]] == ["ca.crt"] for v in vols), where
        if component == "writer":
            assert role_toml(build, tpl)["writer"]["data_tls"] == "on", where


def test_production_broker_serves_tls_only(builds: dict[str, Build]) -> None:
    build = builds["production"]
    (cert,) = build.all("Certificate")
    (cluster,) = build.all("RabbitmqCluster")
    tls = cluster["spec"]["tls"]
    assert tls["secretName"] == cert["spec"]["secretName"]
    assert tls["caSecretName"] == cert["spec"]["secretName"]
    assert tls["disableNonTLSListeners"] is True
    assert "server auth" in cert["spec"]["usages"]
    # The Issuer is the site's: referenced, not shipped.
    assert cert["spec"]["issuerRef"]["name"] == "vmbackup-broker-ca"
    assert not build.all("Issuer") and not build.all("ClusterIssuer")
    # The services reach the broker on the TLS port.
    rmq = rabbitmq_pod(build)
    for pod in _by_component(build, *ROLES):
        assert allowed(build, pod, rmq, 5671), pod.name


def test_dev_overlay_stays_plain_and_says_so(builds: dict[str, Build]) -> None:
    build = builds["dev"]
    for _component, obj, tpl in role_pods(build):
        broker = role_toml(build, tpl)["broker"]
        assert broker["url"].startswith("amqp://"), f"{obj['metadata']['name']}: {broker}"
        assert not broker.get("require_tls", False)
    (cluster,) = build.all("RabbitmqCluster")
    assert "tls" not in cluster["spec"]
    assert not build.all("Certificate")
    text = (BUILDS["dev"] / "kustomization.yaml").read_text(encoding="utf-8")
    assert "plain amqp://" in text and "not encrypted" in text
