"""The commands taking --repo that test_s3_cli.py does not run, on a repository at
s3://BUCKET/PREFIX of the lab's real RGW: each works there, or refuses naming why and
what to do instead (`repo upgrade`: S3 is always packs). restore-vm on S3:
tests/restore_vm/test_restore_vm_s3.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from repository.import_disk import import_disk
from repository.upgrade import upgrade
from repository.upgrade_packs import upgrade_to_packs
from tests.repository.test_job_history import NIGHTLY_2, report
from tests.s3repo.conftest import S3Repo, disk_image, rand
from tests.s3repo.test_s3_copy import s3_init
from vmbackup.cli import main


def test_jobs_repair_id_key_work_and_upgrade_refuses(
    s3repo: S3Repo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = s3_init(s3repo.url, s3repo.config, s3repo.cache())
    disk_image(tmp_path / "d.img", [rand(), None])
    import_disk(repo, "web", 2000, tmp_path / "d.img", workers=0)
    repo.record_job(NIGHTLY_2, json.dumps(report(NIGHTLY_2)).encode())
    repo.close()
    on_s3 = ["--repo", s3repo.url, "--s3-config", str(s3repo.config)]
    on_s3 += ["--cache-dir", str(s3repo.cache())]

    def run(*argv: str) -> tuple[int, str]:
        code = main(list(argv))
        out = capsys.readouterr()
        return code, out.out + out.err

    code, out = run("jobs", "list", *on_s3, "--json")
    assert code == 0 and [j["job_id"] for j in json.loads(out)["result"]["jobs"]] == [NIGHTLY_2]
    code, out = run("jobs", "show", *on_s3, NIGHTLY_2)
    assert code == 0 and out.startswith(f"job {NIGHTLY_2}  policy nightly"), out
    code, out = run("repo", "repair", *on_s3, "--json")
    assert code == 0 and json.loads(out)["result"]["ok"] is True, out
    code, out = run("repo", "id-key", *on_s3)
    assert code == 1 and "is not encrypted" in out, out

    code, out = run("repo", "upgrade", *on_s3)
    assert code == 1 and f"not {s3repo.url}: a repository on S3 is always format version 3" in out
    for call in (upgrade, upgrade_to_packs):  # the library says the same
        with pytest.raises(ValueError, match="nothing to upgrade"):
            call(s3repo.url)
