"""Each role's TOML in the built ConfigMap loads with the project's own config loader, with
the pod's environment overrides and its secrets at the paths the pod mounts them."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from common.amqp import BrokerParams
from common.config import ConfigError
from tests.k8s.conftest import K8S, Build
from tests.k8s.test_manifests import main_container, role_toml, site_secret_keys

SECRETS_ROOT = "/run/secrets/vmbackup/"
# Values good enough for validation: the id key must be 64 hex digits.
SAMPLE = {"id-key": "ab" * 32}


def secret_files(cfg: Any) -> list[str]:
    """Every {file = "..."} path in a parsed TOML document."""
    out: list[str] = []
    if isinstance(cfg, dict):
        if set(cfg) == {"file"} and isinstance(cfg["file"], str):
            return [cfg["file"]]
        for v in cfg.values():
            out += secret_files(v)
    elif isinstance(cfg, list):
        for v in cfg:
            out += secret_files(v)
    return out


def mounted_secret_key(build: Build, tpl: dict[str, Any], path: str) -> tuple[str, str]:
    """(Secret name, key) that the pod mounts at ``path``; fails when nothing does."""
    volumes = {v["name"]: v for v in tpl["spec"]["volumes"]}
    for m in main_container(tpl)["volumeMounts"]:
        prefix = m["mountPath"].rstrip("/") + "/"
        if not path.startswith(prefix):
            continue
        vol = volumes[m["name"]]
        assert "secret" in vol, f"{path} is mounted from a non-secret volume"
        rel = path[len(prefix) :]
        items = vol["secret"].get("items")
        if items:
            keys = [i["key"] for i in items if i["path"] == rel]
            assert keys, f"{path}: the Secret volume {m['name']} does not project {rel}"
            return vol["secret"]["secretName"], keys[0]
        return vol["secret"]["secretName"], rel
    raise AssertionError(f"no volume of the pod is mounted at {path}")


def pod_env(build: Build, obj: dict[str, Any], tpl: dict[str, Any], n_shards: int) -> dict:
    env: dict[str, str] = {}
    for e in main_container(tpl).get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[e["name"]] = f"{obj['metadata']['name']}-7d9f8c-x2x4q"
        elif "configMapKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["configMapKeyRef"]
            env[e["name"]] = build.configmap(ref["name"])["data"][ref["key"]]
        else:
            raise AssertionError(f"unexpected env source {e}")
    if obj["kind"] == "StatefulSet":
        from tests.k8s.test_writer_start import load_writer_start

        ws = load_writer_start()
        last = f"{obj['metadata']['name']}-{obj['spec']['replicas'] - 1}"
        env.update(ws.writer_env({**env, "HOSTNAME": last}, n_shards))
    return {k: v for k, v in env.items() if k.startswith("VMBACKUP_")}


def mounted_config_file(build: Build, tpl: dict[str, Any], path: str) -> str:
    """The text of the ConfigMap key the pod's main container mounts at ``path``."""
    volumes = {v["name"]: v for v in tpl["spec"]["volumes"]}
    for m in main_container(tpl)["volumeMounts"]:
        prefix = m["mountPath"].rstrip("/") + "/"
        vol = volumes[m["name"]]
        if path.startswith(prefix) and "configMap" in vol:
            rel = path[len(prefix) :]
            keys = [i["key"] for i in vol["configMap"].get("items", []) if i["path"] == rel]
            return str(build.configmap(vol["configMap"]["name"])["data"][keys[0] if keys else rel])
    raise AssertionError(f"no ConfigMap volume of the pod is mounted at {path}")


def materialize_s3(build: Build, tpl: dict[str, Any], env: dict[str, str], tmp: Path) -> None:
    """An S3 repository's config file (from its ConfigMap) and credentials file (from
    the Secret mounted where it says) under ``tmp``; the pod's env pointed at them."""
    key = "VMBACKUP_REPOSITORY__S3_CONFIG"
    if key not in env:
        return
    doc = tomllib.loads(mounted_config_file(build, tpl, env[key]))
    creds = doc["credentials_file"]
    assert creds.startswith(SECRETS_ROOT), f"S3 credentials outside {SECRETS_ROOT}: {creds}"
    name, secret_key = mounted_secret_key(build, tpl, creds)
    assert name == "vmbackup-s3-credentials" and secret_key == "credentials", (name, secret_key)
    target = tmp / "s3-credentials"
    target.write_text("[default]\naws_access_key_id = sample\naws_secret_access_key = s\n")
    text = mounted_config_file(build, tpl, env[key]).replace(creds, str(target))
    (tmp / "s3.toml").write_text(text, encoding="utf-8")
    env[key] = str(tmp / "s3.toml")


def materialize(build: Build, tpl: dict[str, Any], cfg: dict[str, Any], tmp: Path) -> str:
    """The role's TOML with its secret files created under ``tmp``; returns the new text."""
    cm = build.configmap("vmbackup-config")
    (vol,) = [v for v in tpl["spec"]["volumes"] if v["name"] == "config"]
    text = cm["data"][vol["configMap"]["items"][0]["key"]]
    known = site_secret_keys(build)
    for path in secret_files(cfg):
        assert path.startswith(SECRETS_ROOT), f"secret outside {SECRETS_ROOT}: {path}"
        name, key = mounted_secret_key(build, tpl, path)
        if name in known:
            assert key in known[name], f"Secret {name} (as the site defines it) has no {key}"
        target = tmp / path[len(SECRETS_ROOT) :]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(SAMPLE.get(key, f"sample-{key}") + "\n", encoding="utf-8")
    return text.replace(SECRETS_ROOT, str(tmp) + "/")


@pytest.mark.parametrize("component", ["coordinator", "writer", "proxy"])
def test_role_config_loads(build: Build, component: str, tmp_path: Path) -> None:
    from vmbackup.config_schema import check_config

    workloads = build.role(component)
    assert workloads, f"{build.name}: no {component}"
    for i, (obj, tpl) in enumerate(workloads):
        raw = role_toml(build, tpl)
        work = tmp_path / str(i)
        work.mkdir()
        path = work / "vmbackup.toml"
        path.write_text(materialize(build, tpl, raw, work / "secrets"), encoding="utf-8")
        env = pod_env(build, obj, tpl, raw["broker"]["n_shards"])
        materialize_s3(build, tpl, env, work)
        # what the role itself checks at start: its keys, its secrets, the references
        found = check_config(path, env, role=component)
        assert not found.problems, [str(p) for p in found.problems]
        cfg = load_config_env(path, env)
        assert cfg.metrics.port == 9400
        assert cfg.metrics.address == "0.0.0.0"  # scraped on the pod IP (default: loopback)
        assert cfg.broker.password.value.startswith("sample-")
        # The role's own account, from its own Secret (not the user in broker.url).
        assert BrokerParams.from_settings(cfg.broker).account == "sample-username"
        if component == "coordinator":
            assert cfg.vcenters and cfg.policies and cfg.repository.path
        elif component == "writer":
            assert cfg.writer.shards != "all" and cfg.repository.passphrase is not None
            assert cfg.writer.name == f"{obj['metadata']['name']}-{obj['spec']['replicas'] - 1}"
        else:
            assert cfg.proxy.queues and cfg.proxy.name.startswith(obj["metadata"]["name"])
            assert cfg.proxy.id_key.value == SAMPLE["id-key"]
            assert cfg.vcenters, "the proxies need the vCenter logins for VDDK"


def test_bad_override_is_rejected(builds: dict[str, Build], tmp_path: Path) -> None:
    """The check is real: a wrong env override in a manifest would fail it."""
    build = builds["production"]
    _obj, tpl = build.role("proxy")[0]
    raw = role_toml(build, tpl)
    path = tmp_path / "proxy.toml"
    path.write_text(materialize(build, tpl, raw, tmp_path / "secrets"), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"proxy\.tasks_in_parallel"):
        load_config_env(path, {"VMBACKUP_PROXY__TASKS_IN_PARALLEL": "many"})


def load_config_env(path: Path, env: dict[str, str]) -> Any:
    import common.config
    from vmbackup.config_schema import Config

    return common.config.load(Config, path, env=env)


def test_example_site_config_files_are_toml() -> None:
    for p in (K8S / "overlays" / "production" / "config").glob("*.toml"):
        tomllib.loads(p.read_text(encoding="utf-8"))
