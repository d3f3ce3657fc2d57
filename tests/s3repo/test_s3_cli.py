"""The CLI on a repository at s3://BUCKET/PREFIX (--s3-config, --cache-dir), real RGW."""

from __future__ import annotations

import json
from pathlib import Path

from tests.repository.test_cli import vmb
from tests.s3repo.conftest import S3Repo, disk_image, rand


def test_cli_on_s3(s3repo: S3Repo, tmp_path: Path) -> None:
    s3 = ["--s3-config", str(s3repo.config), "--cache-dir", str(s3repo.cache())]
    repo = ["--repo", s3repo.url, *s3]
    img = tmp_path / "d.img"
    data = disk_image(img, [rand(), None, rand(), rand()])
    r = vmb("repo", "init", s3repo.url, "--chunk-size", "256K", "--packs", *s3)
    assert r.returncode == 0, r.stderr
    r = vmb("repo", "import-disk", *repo, "--vm", "web", "--disk", "2000", str(img))
    assert r.returncode == 0 and b"(full)" in r.stdout, r.stderr
    r = vmb("repo", "import-disk", *repo, "--vm", "web", "--disk", "2000", str(img))
    assert b"incremental" in r.stdout and b" 0 new" in r.stdout, r.stderr
    doc = json.loads(vmb("repo", "list", *repo, "--json").stdout)["result"]
    assert len(doc["points"]) == 2
    pid = doc["points"][1]["id"]
    r = vmb("restore", *repo, "--point", pid, "--disk", "2000", "--out", "-")
    assert r.returncode == 0 and r.stdout == data, r.stderr
    assert vmb("verify", *repo).returncode == 0
    assert vmb("prune", *repo, "--keep-last", "1").returncode == 0
    r = vmb("gc", *repo)
    assert r.returncode == 0 and b"freed" in r.stdout, r.stderr
    # an s3:// repository without --s3-config: refused, saying what is missing
    r = vmb("repo", "list", "--repo", s3repo.url)
    assert r.returncode != 0 and b"needs --s3-config" in r.stderr + r.stdout
    r = vmb("repo", "init", s3repo.url + "-v2", "--chunk-size", "256K", "--chunk-files", *s3)
    assert r.returncode != 0 and b"keeps chunks in packs" in r.stderr + r.stdout
