"""A repository with one imported point, made through the command, for the CLI tests."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from repository.import_disk import import_disk
from repository.repository import Repository
from tests.repository.conftest import CS, make_image
from tests.repository.test_cli import vmb as cli

ROOT = Path(__file__).resolve().parents[2]


def vmb(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`vmbackup ARGS` in a child, stdout and stderr pipes (no terminal), as text."""
    r: subprocess.CompletedProcess[str] = cli(*args, env=env, text=True, cwd=ROOT, timeout=120)
    return r


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
    repo = Repository.init(tmp_path / "repo", chunk_size=CS)
    image = tmp_path / "d.img"
    data = make_image(image, "rtzrrtzr")
    point = import_disk(repo, "web", 2000, image).point_id
    repo.close()  # its pack sealed: what a finished import leaves
    return Imported(str(repo.path), point, data, image)
