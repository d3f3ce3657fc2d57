"""--json on every command that reports: one document on stdout, errors included, with
the exit status unchanged (docs/cli-json.md)."""

from __future__ import annotations

from pathlib import Path

from repository.repository import Repository
from tests.repository.conftest import damage_chunk, stored_ids
from tests.vmbackup.conftest import Imported, envelope, vmb


def test_each_repository_command_prints_one_document(imported: Imported, tmp_path: Path) -> None:
    repo, pid = imported.repo, imported.point
    new = str(tmp_path / "new-repo")
    doc = envelope(vmb("repo", "init", new, "--json"))
    assert (doc["command"], doc["result"]["chunk_size"]) == ("repo init", 1 << 20)
    doc = envelope(
        vmb("repo", "import-disk", "--repo", repo, "--vm", "web", "--disk", "2000",
            str(imported.image), "--json")
    )  # fmt: skip
    assert doc["result"]["base_point_id"] == pid and doc["result"]["new_chunks"] == 0
    doc = envelope(vmb("repo", "list", "--repo", repo, "--json"))
    assert doc["command"] == "repo list" and len(doc["result"]["points"]) == 2
    out = tmp_path / "disk.img"
    args = ("--repo", repo, "--point", pid, "--disk", "2000", "--out", str(out), "--json")
    doc = envelope(vmb("restore", *args))
    assert doc["result"]["bytes_written"] == len(imported.data) == out.stat().st_size
    assert out.read_bytes() == imported.data
    doc = envelope(vmb("verify", "--repo", repo, "--json"))
    assert doc["result"]["ok"] and doc["result"]["chunks_checked"] == 6  # no zero chunk
    doc = envelope(vmb("prune", "--repo", repo, "--keep-last", "1", "--dry-run", "--json"))
    assert (doc["result"]["kept"], doc["result"]["removed"]) == (1, 1)
    doc = envelope(vmb("gc", "--repo", repo, "--dry-run", "--json"))
    assert doc["result"]["dry_run"] is True and doc["result"]["points"] == 2
    doc = envelope(vmb("repo", "repair", "--repo", repo, "--json"))
    assert doc["result"]["ok"] is True
    doc = envelope(vmb("repo", "upgrade", "--repo", repo, "--json"))
    assert doc["result"]["from_version"] == 3 and doc["result"]["packs"]["finished"]
    doc = envelope(vmb("config", "keys", "--json"))
    assert "repository.path" in {k["key"] for k in doc["result"]["keys"]}


def test_errors_under_json_are_the_same_document(imported: Imported, tmp_path: Path) -> None:
    repo, pid = imported.repo, imported.point
    doc = envelope(vmb("repo", "list", "--repo", str(tmp_path / "nothing"), "--json"))
    assert (doc["exit"], doc["error"]["cause"], doc["result"]) == (1, "repository", None)
    assert "not a vmbackup repository" in doc["error"]["message"]

    out = tmp_path / "taken.img"
    out.write_bytes(b"precious")
    args = ("--repo", repo, "--point", pid, "--out", str(out), "--json")
    doc = envelope(vmb("restore", *args, "--disk", "2000"))
    assert (doc["exit"], doc["error"]["cause"]) == (1, "refused") and "--force" in doc["error"][
        "message"
    ]
    assert out.read_bytes() == b"precious"
    doc = envelope(vmb("restore", *args, "--disk", "9", "--force"))
    assert "its disks: 2000" in doc["error"]["message"]
    doc = envelope(vmb("restore", "--repo", repo, "--point", pid, "--disk", "2000", "--out", "-",
                       "--json"))  # fmt: skip
    assert (doc["exit"], doc["error"]["cause"]) == (2, "usage")
    doc = envelope(vmb("repo", "id-key", "--repo", repo, "--json"))
    assert (doc["exit"], doc["error"]["cause"]) == (1, "refused")

    # argparse's own refusals: the usage on stderr as always, the document on stdout
    doc = envelope(vmb("restore", "--repo", repo, "--json"))
    assert (doc["command"], doc["exit"], doc["error"]["cause"]) == ("restore", 2, "usage")
    assert "--point" in doc["error"]["message"]
    r = vmb("restore", "--repo", repo)  # without --json: no document
    assert r.returncode == 2 and r.stdout == "" and "usage: vmbackup restore" in r.stderr

    bad = tmp_path / "bad.toml"
    bad.write_text('[[policies]]\nname = "gold"\n[policies.retention]\nlast = -1\n')
    doc = envelope(vmb("prune", "--config", str(bad), "--policy", "gold", "--json"))
    assert (doc["exit"], doc["error"]["cause"]) == (2, "config")
    assert [e["key"] for e in doc["result"]["errors"]] == ["policies[0].retention"]
    assert (
        f"config error: {bad}: policies[0].retention: "
        in vmb("prune", "--config", str(bad), "--policy", "gold").stderr
    )


def test_damage_found_is_an_error_with_its_result(imported: Imported) -> None:
    repo = Repository.open(imported.repo)
    victim = stored_ids(repo)[0]
    damage_chunk(repo, victim)
    doc = envelope(vmb("verify", "--repo", imported.repo, "--json"))
    assert (doc["exit"], doc["error"]["cause"]) == (1, "damage")
    assert doc["error"]["message"].endswith("problem(s) found")
    kinds = {p["kind"] for p in doc["result"]["problems"]}
    assert {"bad-chunk", "damaged-point"} <= kinds
    assert doc["result"]["quarantined"] == [victim.hex()]
