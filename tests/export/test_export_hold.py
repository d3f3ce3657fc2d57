"""A running `vmbackup export` holds its point (repository/holds.py): `vmbackup prune`
keeps it while it is served, and once the export stops the hold is gone and prune may
remove the point. Real nbdkit, real prune command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from repository.import_disk import import_disk
from repository.repository import Repository
from tests.repository.conftest import make_image
from tests.repository.test_cli import vmb


def _prune(repo: Repository) -> dict[str, Any]:
    r = vmb("prune", "--repo", str(repo.path), "--keep-last", "1", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    return {p["id"]: p for p in doc["result"]["points"]}


def test_prune_keeps_the_point_an_export_serves(
    repo: Repository, tmp_path: Path, start_export
) -> None:
    img = tmp_path / "d.img"
    make_image(img, "rzt", seed=1)
    old = import_disk(repo, "web1", 2000, img).point_id
    make_image(img, "rzt", seed=2)
    import_disk(repo, "web1", 2000, img)

    ex = start_export("--repo", str(repo.path), "--point", old, "--disk", "2000")
    (hold,) = repo.point_holds()
    assert hold.point_id == old and hold.pid == ex.serving["pid"]
    served = _prune(repo)[old]
    assert served["decision"] == "keep"
    assert any("held by export of disk 2000" in r for r in served["reasons"])
    assert old in {p.id for p in repo.points()}

    assert ex.stop() == 0
    assert repo.point_holds() == []
    assert _prune(repo)[old]["decision"] == "remove"
    assert old not in {p.id for p in repo.points()}
