"""A repository with one imported point, made through the command, for the CLI tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.repository.conftest import make_image

ROOT = Path(__file__).resolve().parents[2]


def vmb(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`vmbackup ARGS` in a child, stdout and stderr pipes (no terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "vmbackup", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=120,
        check=False,
    )


def envelope(r: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The one JSON document of a --json run: stdout holds it and nothing else."""
    doc: dict[str, Any] = json.loads(r.stdout)
    assert set(doc) == {"ok", "command", "exit", "result", "error", "warnings", "schema"}
    assert doc["exit"] == r.returncode and doc["ok"] is (r.returncode == 0)
    assert (doc["error"] is None) is doc["ok"]
    if doc["error"] is not None:
        assert doc["error"]["message"] == doc["error"]["reasons"][0]
        assert doc["error"]["message"] in r.stderr or doc["error"]["cause"] == "config", r.stderr
    return doc


@dataclass
class Imported:
    repo: str
    point: str
    data: bytes
    image: Path


@pytest.fixture
def imported(tmp_path: Path) -> Imported:
    """A repository (256 KiB chunks) with one point of an 8-chunk disk 2000."""
    repo = str(tmp_path / "repo")
    image = tmp_path / "d.img"
    data = make_image(image, "rtzrrtzr")
    assert vmb("repo", "init", repo, "--chunk-size", "256K").returncode == 0
    r = vmb("repo", "import-disk", "--repo", repo, "--vm", "web", "--disk", "2000", str(image))
    assert r.returncode == 0, r.stderr
    doc = json.loads(vmb("repo", "list", "--repo", repo, "--json").stdout)
    return Imported(repo, doc["result"]["points"][0]["id"], data, image)
