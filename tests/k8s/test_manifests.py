"""The kustomize builds of k8s/overlays (dev, production) hold what we rely on."""

from __future__ import annotations

import re
import tomllib
from typing import Any

import pytest

from proxy_worker.settings import ProxySettings
from tests.k8s.conftest import Build

MiB = 1 << 20
# Secrets the base references but does not define (the site provides them: ExternalSecret,
# sealed secrets, kubectl create secret); the example site must define each one.
SITE_SECRETS = {
    "vmbackup-broker-coordinator",
    "vmbackup-broker-proxy",
    "vmbackup-broker-writer",
    "vmbackup-repository",
    "vmbackup-vcenter",
    "vmbackup-vcenter-proxy",
}


# The S3 repository's credentials (k8s/components/s3-repository), provided by the site.
S3_SECRETS = {"vmbackup-s3-credentials"}


def containers(tpl: dict[str, Any]) -> list[dict[str, Any]]:
    spec = tpl["spec"]
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def main_container(tpl: dict[str, Any]) -> dict[str, Any]:
    return tpl["spec"]["containers"][0]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def quantity_bytes(q: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
    for suffix, mult in units.items():
        if q.endswith(suffix):
            return int(q[: -len(suffix)]) * mult
    return int(q)


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in container.get("env", [])}


def role_toml(build: Build, tpl: dict[str, Any]) -> dict[str, Any]:
    """The TOML the pod's main container reads (from the config ConfigMap volume)."""
    cm = build.configmap("vmbackup-config")
    (vol,) = [v for v in tpl["spec"]["volumes"] if v["name"] == "config"]
    assert vol["configMap"]["name"] == cm["metadata"]["name"]
    (item,) = vol["configMap"]["items"]
    return tomllib.loads(cm["data"][item["key"]])


def site_secret_keys(build: Build) -> dict[str, set[str]]:
    """Secret name -> keys, from Secrets, ExternalSecrets and Certificates in the build."""
    out: dict[str, set[str]] = {}
    for s in build.all("Secret"):
        out[s["metadata"]["name"]] = set(s.get("data", {})) | set(s.get("stringData", {}))
    for es in build.all("ExternalSecret"):
        name = es["spec"].get("target", {}).get("name", es["metadata"]["name"])
        out[name] = {d["secretKey"] for d in es["spec"]["data"]}
    for cert in build.all("Certificate"):  # cert-manager writes these keys
        out[cert["spec"]["secretName"]] = {"tls.crt", "tls.key", "ca.crt"}
    return out


def test_expected_objects(build: Build) -> None:
    assert build.get("Namespace", "vmbackup")
    for d in build.docs:
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == "vmbackup", d["metadata"]["name"]
    coord = build.get("Deployment", "vmbackup-coordinator")
    assert coord["spec"]["replicas"] == 1
    assert coord["spec"]["strategy"]["type"] == "Recreate", "never two coordinators at once"
    args = main_container(coord["spec"]["template"])["args"]
    assert args[0] == "coordinator" and "--config" in args
    writer = build.get("StatefulSet", "vmbackup-writer")
    assert (
        writer["spec"]["serviceName"] == build.get("Service", "vmbackup-writer")["metadata"]["name"]
    )
    assert build.role("proxy"), "no proxy group"
    pvc = build.get("PersistentVolumeClaim", "vmbackup-repository")
    rmq = build.get("RabbitmqCluster", "vmbackup-rabbitmq")
    if build.name == "production":
        # writers on many nodes share the repository
        assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
        assert rmq["spec"]["replicas"] == 3, "quorum queues need 3 nodes to survive one loss"
    else:
        assert rmq["spec"]["replicas"] == 1, "dev: one small broker node"
    assert "rabbitmq_prometheus" in rmq["spec"]["rabbitmq"]["additionalPlugins"]
    assert build.get("Vhost", "vmbackup-vhost")["spec"]["defaultQueueType"] == "quorum"
    assert build.all("ServiceMonitor") and build.all("PodMonitor")
    # Every voluntary disruption of the services is bounded (the coordinator has none on
    # purpose: a single Recreate pod).
    budgets = build.all("PodDisruptionBudget")
    for component in ("writer", "proxy"):
        for _obj, tpl in build.role(component):
            labels = tpl["metadata"]["labels"]
            assert any(
                all(labels.get(k) == v for k, v in pdb["spec"]["selector"]["matchLabels"].items())
                for pdb in budgets
            ), f"no PodDisruptionBudget covers {component} {labels}"


def test_pods_are_restricted_and_bounded(build: Build) -> None:
    """Pod Security 'restricted' essentials and resources on every container."""
    for obj, tpl in build.workloads():
        where = f"{build.name} {obj['kind']}/{obj['metadata']['name']}"
        psc = tpl["spec"]["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] > 0, where
        assert psc["seccompProfile"]["type"] == "RuntimeDefault", where
        assert tpl["spec"].get("serviceAccountName") == "vmbackup", where
        for c in containers(tpl):
            csc = c["securityContext"]
            assert csc["allowPrivilegeEscalation"] is False, f"{where} {c['name']}"
            assert csc["capabilities"]["drop"] == ["ALL"], f"{where} {c['name']}"
            res = c["resources"]
            assert {"cpu", "memory"} <= set(res["requests"]), f"{where} {c['name']}"
            assert "memory" in res["limits"], f"{where} {c['name']}"
            image = c["image"]
            assert re.search(r"/[^/]+:[\w.-]+$", image) and not image.endswith(":latest"), image


def test_one_broker_account_per_role(build: Build) -> None:
    """Each role's pods mount only their own broker Secret, imported by that role's User,
    whose Permission holds exactly the patterns of common/broker_accounts.py."""
    from common.broker_accounts import PERMISSIONS, ROLES

    users = {u["metadata"]["name"]: u for u in build.all("User")}
    perms = {p["spec"]["userReference"]["name"]: p for p in build.all("Permission")}
    assert len(users) == len(perms) == len(ROLES), (sorted(users), sorted(perms))
    secret_to_user = {
        u["spec"]["importCredentialsSecret"]["name"]: name for name, u in users.items()
    }
    for role in ROLES:
        secret = f"vmbackup-broker-{role}"
        user = secret_to_user[secret]
        want = PERMISSIONS[role]
        got = perms[user]["spec"]["permissions"]
        assert got == {"configure": want.configure, "write": want.write, "read": want.read}
        assert perms[user]["spec"]["vhost"] == "vmbackup"
        for obj, tpl in build.role(role):
            mounted = {
                v["secret"]["secretName"]
                for v in tpl["spec"]["volumes"]
                if "secret" in v and v["secret"]["secretName"].startswith("vmbackup-broker")
            }
            assert mounted == {secret}, f"{obj['metadata']['name']} mounts {mounted}"
            broker = role_toml(build, tpl)["broker"]
            assert broker["user"] == {"file": "/run/secrets/vmbackup/broker/username"}
    writer_cfg = role_toml(build, build.role("writer")[0][1])["writer"]
    assert writer_cfg["coordinator_users"] == ["vmbackup-coordinator"]
    assert writer_cfg["proxy_users"] == ["vmbackup-proxy"]


def test_references_resolve(build: Build) -> None:
    """Volumes name existing ConfigMaps, PVCs and (site) Secrets; mounts name volumes."""
    configmaps = {d["metadata"]["name"]: d for d in build.all("ConfigMap")}
    pvcs = {d["metadata"]["name"] for d in build.all("PersistentVolumeClaim")}
    secrets = site_secret_keys(build)
    if build.name == "production":
        missing = SITE_SECRETS - set(secrets)
        assert not missing, f"{build.name} does not define secrets {missing}"
    for obj, tpl in build.workloads():
        where = f"{build.name} {obj['kind']}/{obj['metadata']['name']}"
        volumes = {v["name"]: v for v in tpl["spec"].get("volumes", [])}
        for c in containers(tpl):
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes, f"{where}: mount of unknown volume {m['name']}"
        for v in volumes.values():
            if "configMap" in v:
                cm = configmaps.get(v["configMap"]["name"])
                assert cm is not None, f"{where}: ConfigMap {v['configMap']['name']} missing"
                for item in v["configMap"].get("items", []):
                    assert item["key"] in cm["data"], f"{where}: key {item['key']} missing"
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in pvcs, where
            if "secret" in v:
                name = v["secret"]["secretName"]
                known = SITE_SECRETS | set(secrets) | (S3_SECRETS if build.name == "s3" else set())
                assert name in known, f"{where}: unknown Secret {name}"
                if name in secrets:
                    for item in v["secret"].get("items", []):
                        assert item["key"] in secrets[name], f"{where}: {name} has no {item['key']}"


def test_selectors_match_pods(build: Build) -> None:
    """Services, PDBs and monitors select pods that exist, on ports that exist."""
    pods = [tpl for _, tpl in build.workloads()]
    for svc in build.all("Service"):
        matched = [p for p in pods if selects(svc["spec"]["selector"], p["metadata"]["labels"])]
        assert matched, f"Service {svc['metadata']['name']} selects no pod"
        for port in svc["spec"]["ports"]:
            for p in matched:
                names = {cp.get("name") for cp in main_container(p).get("ports", [])}
                assert port["targetPort"] in names, f"{svc['metadata']['name']} {port}"
    for pdb in build.all("PodDisruptionBudget"):
        sel = pdb["spec"]["selector"]["matchLabels"]
        assert any(selects(sel, p["metadata"]["labels"]) for p in pods), pdb["metadata"]["name"]
        assert "maxUnavailable" in pdb["spec"] or "minAvailable" in pdb["spec"]
    (sm,) = build.all("ServiceMonitor")
    monitored = [
        s
        for s in build.all("Service")
        if selects(sm["spec"]["selector"]["matchLabels"], s["metadata"].get("labels", {}))
    ]
    assert {s["metadata"]["name"] for s in monitored} == {
        "vmbackup-coordinator",
        "vmbackup-writer",
        "vmbackup-proxy",
    }, "alert rules use these names as the scrape job"
    for ep in sm["spec"]["endpoints"]:
        for s in monitored:
            assert ep["port"] in {p["name"] for p in s["spec"]["ports"]}
    (pm,) = build.all("PodMonitor")
    rmq = build.get(
        "RabbitmqCluster", pm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
    )
    assert rmq
    detailed = [e for e in pm["spec"]["podMetricsEndpoints"] if e["path"] == "/metrics/detailed"]
    (ep,) = detailed
    # The families the alerts, dashboard and autoscaler read (rabbitmq_detailed_queue_*).
    assert {"queue_coarse_metrics", "queue_consumer_count"} <= set(ep["params"]["family"])
    assert ep["params"]["vhost"] == ["vmbackup"]


def test_metrics_port_matches_config(build: Build) -> None:
    for component in ("coordinator", "writer", "proxy"):
        for _obj, tpl in build.role(component):
            cfg = role_toml(build, tpl)
            port = cfg.get("metrics", {}).get("port", 9400)
            ports = {p["name"]: p["containerPort"] for p in main_container(tpl)["ports"]}
            assert ports["metrics"] == port, f"{component}: metrics port != metrics.port"


def test_writer_replicas_and_shards(build: Build) -> None:
    sts = build.get("StatefulSet", "vmbackup-writer")
    tpl = sts["spec"]["template"]
    c = main_container(tpl)
    groups = int(env_of(c)["WRITER_SHARD_GROUPS"]["value"])
    so = build.get("ScaledObject", "vmbackup-writer")
    assert so["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "name": "vmbackup-writer",
    }
    # The first `groups` ordinals own every shard: they must always run.
    assert so["spec"]["minReplicaCount"] == groups == sts["spec"]["replicas"], (
        "WRITER_SHARD_GROUPS, the StatefulSet's replicas and the ScaledObject's "
        "minReplicaCount must be equal (shard ownership)"
    )
    assert so["spec"]["maxReplicaCount"] >= groups
    # Scaled on exactly the shard queues' depth, two full prefetch windows per writer, and
    # (chunk streams bypass the queues) on the writers' busy time when they offer streams.
    from common.sharding import shard_queue

    n = role_toml(build, tpl)["broker"]["n_shards"]
    trigger, *busy = so["spec"]["triggers"]
    if role_toml(build, tpl)["writer"].get("data_listen"):
        (b,) = busy
        assert "vmbackup_writer_write_seconds_sum" in b["metadata"]["query"]
        assert 0 < float(b["metadata"]["threshold"]) <= 2  # a writer works on 2 at once
    else:
        assert busy == []
    rx = _promql_regex(trigger["metadata"]["query"])
    assert all(rx.fullmatch(shard_queue(i)) for i in range(n))
    assert not rx.fullmatch("vmbackup.tasks.host.esx-01") and not rx.fullmatch("vmbackup.commits")
    prefetch = role_toml(build, tpl)["writer"].get("prefetch", 16)
    assert trigger["metadata"]["threshold"] == str(2 * prefetch)
    n_shards = role_toml(build, tpl)["broker"]["n_shards"]
    assert 1 <= groups <= n_shards
    # The entry point is writer_start.py from the scripts ConfigMap, wrapping `vmbackup writer`.
    script = c["command"][1]
    (mount,) = [m for m in c["volumeMounts"] if script.startswith(m["mountPath"] + "/")]
    (vol,) = [v for v in tpl["spec"]["volumes"] if v["name"] == mount["name"]]
    cm = build.get("ConfigMap", vol["configMap"]["name"])
    assert script.rsplit("/", 1)[1] in cm["data"]
    assert c["command"][3:5] == ["vmbackup", "writer"]


def test_memory_limits_fit_the_settings(build: Build) -> None:
    for _obj, tpl in build.role("proxy"):
        cfg = role_toml(build, tpl)["proxy"]
        chunk_mib = cfg.get("memory_limit_mib", ProxySettings().memory_limit_mib)
        assert chunk_mib <= 256, "memory goal: a proxy holds at most 256 MiB of chunk data"
        res = main_container(tpl)["resources"]
        limit = quantity_bytes(res["limits"]["memory"])
        # Chunk data plus interpreter, buffers and nbdkit/VDDK: at least 256 MiB more.
        assert limit >= (chunk_mib + 256) * MiB, limit
        assert limit <= 1024 * MiB, "a proxy should not need more than 1 GiB"
    for _obj, tpl in build.role("writer"):
        prefetch = role_toml(build, tpl)["writer"].get("prefetch", 16)
        batch = 4 * MiB  # proxy.batch_bytes default
        limit = quantity_bytes(main_container(tpl)["resources"]["limits"]["memory"])
        assert limit >= 2 * prefetch * batch + 256 * MiB, "writer limit below its batch bound"


def _promql_regex(query: str) -> re.Pattern[str]:
    m = re.search(r'queue=~"((?:[^"\\]|\\.)*)"', query)
    assert m, f"no queue regex in {query!r}"
    # PromQL double-quoted strings use Go escapes: \\ is one backslash.
    return re.compile(m.group(1).replace("\\\\", "\\"))


def test_proxy_groups_placement_and_autoscaling(build: Build) -> None:
    from common.amqp import task_queue

    deployments = {d["metadata"]["name"]: d for d in build.all("Deployment")}
    scaled = [
        so
        for so in build.all("ScaledObject")
        if so["spec"]["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    ]
    proxies = build.role("proxy")
    assert len(scaled) == len(proxies), "one ScaledObject per proxy group"
    for so in scaled:
        target = deployments[so["spec"]["scaleTargetRef"]["name"]]
        tpl = target["spec"]["template"]
        group = tpl["metadata"]["labels"]["vmbackup.io/proxy-group"]
        # Placement: required node affinity on the group's node label.
        terms = tpl["spec"]["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]["nodeSelectorTerms"]
        exprs = [e for t in terms for e in t["matchExpressions"]]
        assert {"key": "vmbackup.io/proxy-group", "operator": "In", "values": [group]} in exprs
        # The scaling query covers exactly the group's task queues.
        env = env_of(main_container(tpl))
        queues = tomllib.loads("q = " + env["VMBACKUP_PROXY__QUEUES"]["value"])["q"]
        assert queues, f"group {group} takes no queues"
        (trigger,) = so["spec"]["triggers"]
        assert trigger["type"] == "prometheus"
        query = trigger["metadata"]["query"]
        assert "rabbitmq_detailed_queue_messages{" in query
        rx = _promql_regex(query)
        for key in queues:
            assert rx.fullmatch(task_queue(key)), f"{group}: query misses {task_queue(key)}"
        assert not rx.fullmatch(task_queue("host.some-other-host")), "query too wide"
        # No more replicas than the coordinator can feed (tasks_per_host per host).
        coord_tpl = build.get("Deployment", "vmbackup-coordinator")["spec"]["template"]
        per_host = role_toml(build, coord_tpl)["coordinator"]["limits"]["tasks_per_host"]
        in_parallel = role_toml(build, tpl)["proxy"].get("tasks_in_parallel", 2)
        assert trigger["metadata"]["threshold"] == str(in_parallel)
        assert so["spec"]["maxReplicaCount"] * in_parallel <= len(queues) * per_host
        assert 1 <= so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"]


def test_shared_sections_identical(build: Build) -> None:
    """One broker, one repository: every role's file agrees on the shared sections."""
    cm = build.configmap("vmbackup-config")
    files = {k: tomllib.loads(v) for k, v in cm["data"].items()}
    assert set(files) == {"coordinator.toml", "proxy.toml", "writer.toml"}
    for section in ("broker", "log", "metrics", "repository", "vcenters"):
        present = {k: f[section] for k, f in files.items() if section in f}
        values = list(present.values())
        assert all(v == values[0] for v in values), f"[{section}] differs: {present}"
    assert "vcenters" not in files["writer.toml"], "writers must not get vCenter credentials"


@pytest.mark.parametrize("tool_missing", ["kubectl-that-does-not-exist"])
def test_missing_tool_fails_clearly(tool_missing: str) -> None:
    from tests.k8s.conftest import require_tool

    with pytest.raises(pytest.fail.Exception, match=r"is not installed.*make setup"):
        require_tool(tool_missing, "some-package")


def test_production_least_privilege(builds: dict[str, Build]) -> None:
    """Production: images by digest (a tag can move), the proxies with their own vCenter
    account (never the coordinator's Secret), and the broker's egress bounded to named
    peers on every rule (no rule open to any address)."""
    prod = builds["production"]
    for obj, tpl in prod.workloads():
        for c in containers(tpl):
            assert "@sha256:" in c["image"], f"{obj['metadata']['name']}: {c['image']} by tag"
    proxies = prod.role("proxy")
    assert proxies
    for obj, tpl in proxies:
        secrets = {v["secret"]["secretName"] for v in tpl["spec"]["volumes"] if "secret" in v}
        assert "vmbackup-vcenter-proxy" in secrets and "vmbackup-vcenter" not in secrets, obj
    for _obj, tpl in prod.role("coordinator"):
        secrets = {v["secret"]["secretName"] for v in tpl["spec"]["volumes"] if "secret" in v}
        assert "vmbackup-vcenter-proxy" not in secrets
    broker = prod.get("NetworkPolicy", "vmbackup-rabbitmq")
    for rule in broker["spec"]["egress"]:
        assert rule.get("to"), f"broker egress rule open to any address: {rule}"
        assert rule.get("ports"), f"broker egress rule on any port: {rule}"


def test_production_second_copy(builds: dict[str, Build]) -> None:
    """The nightly `repo copy` reads the repository read-only and writes the second site's
    volume, each repository with its own passphrase; the command line is the real CLI's."""
    from tests.k8s.test_image import container_calls, parse_vmbackup

    prod = builds["production"]
    cron = prod.get("CronJob", "vmbackup-copy")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    tpl = cron["spec"]["jobTemplate"]["spec"]["template"]
    c = main_container(tpl)
    calls = [parse_vmbackup(argv, "copy") for argv in container_calls(c, "copy")]
    (copy,) = [a for a in calls if getattr(a, "repo_command", "") == "copy"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts[copy.from_repo]["readOnly"] is True
    assert copy.to_repo.startswith(mounts["/var/lib/vmbackup/copy"]["mountPath"] + "/")
    assert copy.from_passphrase_file != copy.to_passphrase_file
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in tpl["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims[mounts[copy.from_repo]["name"]] == "vmbackup-repository"
    assert claims["copy"] == "vmbackup-repository-copy" != "vmbackup-repository"
    assert "vmbackup-repository-copy" in site_secret_keys(prod)


def test_s3_overlay_keeps_no_chunks_on_a_volume(builds: dict[str, Build]) -> None:
    """k8s/overlays/s3: every pod that opens the repository opens the one S3 URL with the
    S3 config and credentials it mounts, and a cache of its own on an emptyDir; no writer
    mounts a PersistentVolumeClaim; the claim that stays is small (the job reports)."""
    build = builds["s3"]
    url = build.configmap("vmbackup-s3")["data"]["url"]
    assert url.startswith("s3://")
    assert quantity_bytes(
        build.get("PersistentVolumeClaim", "vmbackup-repository")["spec"]["resources"]["requests"][
            "storage"
        ]
    ) <= (1 << 30)
    for component in ("writer", "coordinator"):
        for obj, tpl in build.role(component):
            env = env_of(main_container(tpl))
            ref = env["VMBACKUP_REPOSITORY__PATH"]["valueFrom"]["configMapKeyRef"]
            assert (ref["name"], ref["key"]) == ("vmbackup-s3", "url"), obj["metadata"]["name"]
            cache = env["VMBACKUP_REPOSITORY__CACHE_DIR"]["value"]
            volumes = {v["name"]: v for v in tpl["spec"]["volumes"]}
            mounts = {m["mountPath"]: m["name"] for m in main_container(tpl)["volumeMounts"]}
            assert "emptyDir" in volumes[mounts[cache]], f"{component}: cache not an emptyDir"
            s3_config = env["VMBACKUP_REPOSITORY__S3_CONFIG"]["value"]
            assert any(s3_config.startswith(p + "/") for p in mounts), s3_config
            if component == "writer":
                assert not [v for v in volumes.values() if "persistentVolumeClaim" in v]
                assert not tpl["spec"].get("initContainers"), "nothing waits for a volume"
    # the maintenance Jobs open the same URL (as $(REPO)) with a cache each
    for obj, tpl in build.workloads():
        if obj["kind"] not in ("Job", "CronJob"):
            continue
        c = main_container(tpl)
        ref = env_of(c)["REPO"]["valueFrom"]["configMapKeyRef"]
        assert (ref["name"], ref["key"]) == ("vmbackup-s3", "url"), obj["metadata"]["name"]
        words = " ".join(c.get("command", []) + c.get("args", []))
        assert "--s3-config=/etc/vmbackup-s3/s3.toml" in words, obj["metadata"]["name"]
        assert "--cache-dir=/var/cache/vmbackup" in words, obj["metadata"]["name"]
