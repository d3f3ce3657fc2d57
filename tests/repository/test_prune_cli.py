"""`vmbackup prune --policy`: the policy's retention from the config, a dry run that says
per point what would go and why the rest stays, --json, and only that policy's points."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from common.job_ids import new_job_id
from repository.import_disk import import_disk
from repository.repository import Repository
from tests.repository.conftest import make_image
from tests.repository.test_cli import vmb


def _points(repo: Repository, tmp_path: Path, policy: str, vm: str, days: list[int]) -> list[str]:
    img = tmp_path / f"{vm}.img"
    out = []
    for day in days:
        make_image(img, "rz", seed=day)
        when = datetime(2026, 11, day, 22, tzinfo=UTC)
        job = new_job_id(policy, when)
        out.append(
            import_disk(repo, vm, 2000, img, job_id=job, snapshot_time=when.timestamp()).point_id
        )
    return out


def _config(tmp_path: Path, repo: Path, retention: str) -> Path:
    cfg = tmp_path / "vmbackup.toml"
    cfg.write_text(
        f'[repository]\npath = "{repo}"\n\n'
        '[[policies]]\nname = "gold"\n'
        f"[policies.retention]\n{retention}\n\n"
        '[[policies]]\nname = "silver"\n'
    )
    return cfg


def test_prune_a_policy_from_its_config(repo: Repository, tmp_path: Path) -> None:
    gold = _points(repo, tmp_path, "gold", "web", [2, 3, 4, 10])  # W45 and W46
    silver = _points(repo, tmp_path, "silver", "web", [5])
    cfg = _config(tmp_path, repo.path, "last = 1\nweekly = 2")

    r = vmb("prune", "--config", str(cfg), "--policy", "gold", "--dry-run", text=True)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == (
        f"points of policy 'gold', keep last 1, weekly 2 (policies.retention of 'gold' in {cfg})"
        " (dry run: nothing is removed)"
    )
    row = {line.split()[1]: line for line in lines if line.startswith("  ")}
    assert set(row) == set(gold)  # silver's point is not even looked at
    assert "keep    " in row[gold[3]] and "(last #1; weekly 2026-W46)" in row[gold[3]]
    assert "(weekly 2026-W45)" in row[gold[2]]
    assert row[gold[0]].lstrip().startswith("remove ")
    assert "not among the last 1; weekly 2026-W45 is kept by a newer point" in row[gold[0]]
    assert lines[-1] == "2 kept, 2 would be removed"
    assert len(repo.points()) == 5

    r = vmb("prune", "--config", str(cfg), "--policy", "gold", "--json", text=True)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)["result"]
    assert (doc["dry_run"], doc["policy"], doc["kept"], doc["removed"]) == (False, "gold", 2, 2)
    assert doc["keep"] == {
        "last": 1,
        "hourly": 0,
        "daily": 0,
        "weekly": 2,
        "monthly": 0,
        "yearly": 0,
    }
    by_id = {p["id"]: p for p in doc["points"]}
    assert by_id[gold[0]]["decision"] == "remove" and by_id[gold[3]]["decision"] == "keep"
    assert by_id[gold[3]]["reasons"] == ["last #1", "weekly 2026-W46"]
    assert by_id[gold[0]]["job_id"].startswith("gold-20261102T220000Z-")
    assert {p.id for p in repo.points()} == {gold[2], gold[3], *silver}


def test_prune_refuses_what_it_cannot_do(repo: Repository, tmp_path: Path) -> None:
    _points(repo, tmp_path, "silver", "web", [1, 2])
    cfg = _config(tmp_path, repo.path, "last = 1")
    r = vmb("prune", "--config", str(cfg), "--policy", "silver", text=True)
    assert r.returncode == 1 and "policy 'silver' has no retention" in r.stderr
    r = vmb("prune", "--config", str(cfg), "--policy", "bronze", "--json", text=True)
    assert r.returncode == 1 and "no policy named 'bronze'" in r.stderr
    assert "no policy named 'bronze'" in json.loads(r.stdout)["error"]["message"]
    r = vmb("prune", "--policy", "silver", "--keep-last", "1", text=True)
    assert r.returncode == 1 and "no repository: --repo PATH" in r.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[[policies]]\nname = "gold"\n[policies.retention]\nlast = -1\n')
    r = vmb("prune", "--config", str(bad), "--policy", "gold", text=True)
    assert r.returncode == 2 and "retention.last must be >= 0" in r.stderr
    # --keep-* wins over the config; points of silver only
    r = vmb("prune", "--repo", str(repo.path), "--policy", "silver", "--keep-last", "1", text=True)
    assert r.returncode == 0 and r.stdout.splitlines()[-1].startswith("1 kept, 1 removed")
    assert len(repo.points()) == 1
