"""Every object the k8s/ builds render validates against a schema, offline (issue #8).

The builds are both overlays (tests/k8s/conftest.py BUILDS; each includes k8s/monitoring),
rendered by the pinned `kubectl kustomize` (conftest.py), whatever they contain: the objects
are listed when the tests are collected, one test per object and Kubernetes version.

* Kubernetes' own kinds (apiVersion "v1", "apps/v1", "*.k8s.io/...") validate with
  kubernetes-validate, strict (unknown fields rejected), against the oldest Kubernetes
  version docs/kubernetes.md supports ("Kubernetes ≥ 1.27") and kubernetes-validate's
  newest.
* Every other kind (an operator's CRD) validates against
  tests/k8s/crd-schemas/<group>_<version>_<kind>.json, a JSON Schema written from the
  upstream CRD (each file's "$comment" names the repository, path and release). An object
  whose kind has no schema file fails: a new kind cannot slip by unchecked. Those schemas
  refer to Kubernetes types (ObjectMeta, Affinity, LabelSelector, ...) by "$ref" into
  kubernetes-validate's strict definitions of the version being checked.

To add a kind: read its CRD (config/crd/bases or the like, at the operator release you
target), then write the schema with its required fields at every level the manifests use,
the types of the fields they set, and "additionalProperties": false wherever the CRD is
structural (the API server rejects unknown fields there), as the existing files do.
"""

from __future__ import annotations

import copy
import json
import re
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from referencing import Registry, Resource

from tests.k8s.conftest import BUILDS, ROOT, kustomize

SCHEMAS = Path(__file__).resolve().parent / "crd-schemas"
K8S_DEFINITIONS = "https://kubernetes.io/api/_definitions.json"


def oldest_supported() -> str:
    """The oldest Kubernetes version (major.minor) docs/kubernetes.md says is supported."""
    doc = (ROOT / "docs" / "kubernetes.md").read_text(encoding="utf-8")
    found = re.findall(r"Kubernetes ≥ (\d+\.\d+)", doc)
    assert found, "docs/kubernetes.md names no 'Kubernetes ≥ X.Y' (the oldest supported)"
    assert len(set(found)) == 1, f"docs/kubernetes.md names several oldest versions: {found}"
    return found[0]


def major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


K8S_VERSIONS = sorted(
    {oldest_supported(), major_minor(kubernetes_validate.latest_version())},
    key=lambda v: tuple(int(p) for p in v.split(".")),
)


def api_group(api_version: str) -> str:
    """ "apps" for "apps/v1", "" for the core group's "v1"."""
    return api_version.rpartition("/")[0]


def schema_path(obj: dict[str, Any]) -> Path:
    group, _, version = obj["apiVersion"].rpartition("/")
    return SCHEMAS / f"{group}_{version}_{obj['kind']}.json"


def is_kubernetes_kind(obj: dict[str, Any]) -> bool:
    """A kind of Kubernetes itself (validated by kubernetes-validate), not of an operator.

    Groups without a dot and *.k8s.io groups are Kubernetes', unless a CRD schema file
    claims the kind (some CRDs live in *.k8s.io groups, e.g. gateway.networking.k8s.io)."""
    group = api_group(obj["apiVersion"])
    return ("." not in group or group.endswith(".k8s.io")) and not schema_path(obj).exists()


def rendered() -> list[tuple[str, dict[str, Any]]]:
    """(build name, object) of every object of every build."""
    return [(name, obj) for name, path in BUILDS.items() for obj in kustomize(path)]


RENDERED = rendered()


def object_id(build: str, obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}/{build}"


def params(kubernetes: bool) -> list[Any]:
    out = []
    for build, obj in RENDERED:
        if is_kubernetes_kind(obj) != kubernetes:
            continue
        out.append(pytest.param(obj, id=object_id(build, obj)))
    return out


def format_error(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path) or "(top)"
    return f"{path}: {error.message}"


def kubernetes_errors(obj: dict[str, Any], version: str) -> list[str]:
    """kubernetes-validate's verdict (strict) on one object of a Kubernetes kind."""
    try:
        validated = kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [format_error(e)]
    except kubernetes_validate.SchemaNotFoundError as e:
        return [e.message]
    assert validated == version, f"validated against {validated}, not {version}"
    return []


@cache
def kubernetes_definitions(version: str) -> Registry:
    """kubernetes-validate's strict definitions of one Kubernetes version, as a registry
    resolving the CRD schemas' "$ref"s to K8S_DEFINITIONS."""
    path = (
        resources.files("kubernetes_validate")
        / "kubernetes-json-schema"
        / f"v{version}.0-local-strict"
        / "_definitions.json"
    )
    assert path.is_file(), f"kubernetes-validate has no strict schemas for Kubernetes {version}"
    definitions = json.loads(path.read_text(encoding="utf-8"))
    assert definitions["$id"] == K8S_DEFINITIONS, definitions["$id"]
    return Registry().with_resource(K8S_DEFINITIONS, Resource.from_contents(definitions))


@cache
def crd_schema(path: Path) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema


def crd_errors(obj: dict[str, Any], version: str) -> list[str]:
    """Every error of one object of an operator's kind against its schema file."""
    path = schema_path(obj)
    if not path.exists():
        return [
            f"no schema for {obj['apiVersion']} {obj['kind']}: write "
            f"{path.relative_to(ROOT)} from the upstream CRD (see this module's docstring)"
        ]
    validator = jsonschema.Draft202012Validator(
        crd_schema(path), registry=kubernetes_definitions(version)
    )
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
    return [format_error(e) for e in errors]


def test_builds_render_objects_of_both_families() -> None:
    builds = {build for build, _ in RENDERED}
    assert builds == set(BUILDS), f"builds with no object: {set(BUILDS) - builds}"
    assert params(kubernetes=True) and params(kubernetes=False)


def test_versions_are_the_documented_oldest_and_the_newest() -> None:
    assert K8S_VERSIONS[0] == oldest_supported()
    assert K8S_VERSIONS[-1] == major_minor(kubernetes_validate.latest_version())


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("obj", params(kubernetes=True))
def test_kubernetes_object_validates(obj: dict[str, Any], version: str) -> None:
    errors = kubernetes_errors(obj, version)
    assert not errors, f"Kubernetes {version}:\n" + "\n".join(errors)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("obj", params(kubernetes=False))
def test_crd_object_validates(obj: dict[str, Any], version: str) -> None:
    errors = crd_errors(obj, version)
    assert not errors, f"{schema_path(obj).name} (Kubernetes {version} types):\n" + "\n".join(
        errors
    )


SCHEMA_FILES = sorted(SCHEMAS.glob("*.json"))


def test_schema_files_found() -> None:
    assert SCHEMA_FILES, f"no schema in {SCHEMAS}"


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.name)
def test_schema_file(path: Path) -> None:
    """Each file is a valid JSON Schema for the kind its name says, names its upstream
    source, and every "$ref" into the Kubernetes definitions resolves in every version."""
    schema = crd_schema(path)
    jsonschema.Draft202012Validator.check_schema(schema)
    group, version, kind = path.stem.split("_")
    assert schema["properties"]["apiVersion"] == {"const": f"{group}/{version}"}
    assert schema["properties"]["kind"] == {"const": kind}
    assert schema["title"] == f"{group}/{version} {kind}"
    assert re.match(
        r"Written from [\w.-]+/[\w.-]+ v\d+\.\d+\.\d+, \S+\.yaml \(version \w+", schema["$comment"]
    ), f"{path.name}: the $comment must start 'Written from <owner/repo> <release>, <path>'"
    assert schema.get("additionalProperties") is False, f"{path.name}: top level not closed"
    refs = set(re.findall(r'"\$ref": "(https://[^"]+)"', path.read_text(encoding="utf-8")))
    for k8s_version in K8S_VERSIONS:
        resolver = kubernetes_definitions(k8s_version).resolver()
        for ref in refs:
            resolver.lookup(ref)  # raises Unresolvable


# Negative cases: the checks reject what they must (each also shows the unmodified object
# passes, so the rejection is due to the change).


def first(kind: str) -> dict[str, Any]:
    found = [obj for _, obj in RENDERED if obj["kind"] == kind]
    assert found, f"no {kind} rendered"
    return copy.deepcopy(found[0])


def rename_key(mapping: dict[str, Any], old: str, new: str) -> None:
    mapping[new] = mapping.pop(old)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_misspelt_deployment_field_fails(version: str) -> None:
    deployment = first("Deployment")
    assert kubernetes_errors(deployment, version) == []
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    rename_key(container, "image", "imgae")
    (error,) = kubernetes_errors(deployment, version)
    assert error.startswith("spec.template.spec.containers.0: ")
    assert "'imgae' was unexpected" in error


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_scaledobject_without_scale_target_fails(version: str) -> None:
    scaled = first("ScaledObject")
    assert crd_errors(scaled, version) == []
    del scaled["spec"]["scaleTargetRef"]
    assert crd_errors(scaled, version) == ["spec: 'scaleTargetRef' is a required property"]


MISSPELT_CRD_FIELDS = [
    ("ScaledObject", ("spec",), "pollingInterval", "pollingIntervall"),
    ("ServiceMonitor", ("spec", "endpoints", 0), "interval", "intervall"),
    ("PodMonitor", ("spec", "selector"), "matchLabels", "matchLabel"),
    ("RabbitmqCluster", ("spec", "rabbitmq"), "additionalPlugins", "additionalPlugin"),
    ("Certificate", ("spec",), "dnsNames", "dnsName"),
    ("Certificate", ("spec", "issuerRef"), "name", "nmae"),
    ("Vhost", ("metadata",), "name", "nmae"),
]


@pytest.mark.parametrize(
    ("kind", "path", "old", "new"),
    MISSPELT_CRD_FIELDS,
    ids=[f"{k}:{'.'.join(map(str, p))}.{n}" for k, p, _, n in MISSPELT_CRD_FIELDS],
)
def test_misspelt_crd_field_fails(kind: str, path: tuple[Any, ...], old: str, new: str) -> None:
    obj = first(kind)
    version = K8S_VERSIONS[0]
    assert crd_errors(obj, version) == []
    node: Any = obj
    for step in path:
        node = node[step]
    rename_key(node, old, new)
    errors = crd_errors(obj, version)
    assert any(f"'{new}' was unexpected" in e for e in errors), errors


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_certificate_without_secret_name_fails(version: str) -> None:
    cert = first("Certificate")
    assert crd_errors(cert, version) == []
    del cert["spec"]["secretName"]
    assert crd_errors(cert, version) == ["spec: 'secretName' is a required property"]


def test_wrong_type_in_crd_fails() -> None:
    scaled = first("ScaledObject")
    scaled["spec"]["triggers"][0]["metadata"]["threshold"] = 2  # KEDA wants strings
    assert crd_errors(scaled, K8S_VERSIONS[0]) == [
        "spec.triggers.0.metadata.threshold: 2 is not of type 'string'"
    ]


def test_kind_without_schema_file_fails() -> None:
    obj = {
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "w"},
        "spec": {},
    }
    assert not is_kubernetes_kind(obj)
    (error,) = crd_errors(obj, K8S_VERSIONS[0])
    assert "no schema for example.com/v1 Widget" in error
    assert "tests/k8s/crd-schemas/example.com_v1_Widget.json" in error
