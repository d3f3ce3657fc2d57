"""The job history in the repository: kept by the writer's commits-queue handler from a
JobRecord, listed in start order, sealed like point metadata, refused when not what its
name says; and `vmbackup jobs` reading it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from common.messages import JobRecord, MessageError, decode, encode
from repository.errors import CorruptObjectError, InvalidRequestError, JobNotFoundError
from repository.repository import Repository
from repository_writer.commit_queue import commit_queue_reply
from vmbackup.cli import main

NIGHTLY_1 = "nightly-20260101T220000Z-aaaaaa"
NIGHTLY_2 = "nightly-20260102T220000Z-bbbbbb"
WEEKLY = "weekly-20260101T230000Z-cccccc"


def report(job_id: str, status: str = "ok", **kw: Any) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "policy": job_id.split("-")[0],
        "coordinator": "coord-1",
        "started": 1767304800.0,
        "finished": 1767304812.5,
        "status": status,
        "error": "",
        "cause": "",
        "vms": [{"vcenter": "vc1", "name": "secret-db-01", "moref": "vm-1", "uuid": "u1"}],
        "counts": {"ok": 1, "partial": 0, "failed": 0, "skipped": 0},
        "seconds": 12.5,
        "bytes_read": 4096,
        "bytes_sent": 1024,
        **kw,
    }


def record(repo: Repository, job_id: str, doc: dict[str, Any] | bytes) -> Any:
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    msg = decode(encode(JobRecord("r-" + job_id, "amq.gen-x", job_id, body)), JobRecord)
    return commit_queue_reply(repo, msg)


def test_records_are_kept_and_listed_in_start_order(repo: Repository) -> None:
    for job_id in (NIGHTLY_2, WEEKLY, NIGHTLY_1):
        reply = record(repo, job_id, report(job_id))
        assert reply.ok and reply.request_id == "r-" + job_id, reply
    assert repo.job_ids() == [NIGHTLY_1, WEEKLY, NIGHTLY_2]
    assert repo.job_ids("nightly") == [NIGHTLY_1, NIGHTLY_2]
    assert repo.job_report(WEEKLY) == report(WEEKLY)
    # a redelivery (or a second send) replaces the report whole
    assert record(repo, WEEKLY, report(WEEKLY, "failed", error="x")).ok
    assert repo.job_report(WEEKLY)["status"] == "failed"
    assert sorted(p.name for p in (repo.path / "jobs").iterdir()) == [NIGHTLY_1, NIGHTLY_2, WEEKLY]


def test_an_encrypted_repository_keeps_reports_sealed(enc_repo: Repository) -> None:
    assert record(enc_repo, NIGHTLY_1, report(NIGHTLY_1)).ok
    raw = (enc_repo.path / "jobs" / NIGHTLY_1).read_bytes()
    assert raw[:4] == b"VMBM" and b"secret-db-01" not in raw  # VM names are metadata
    again = Repository.open(enc_repo.path, "correct horse")
    assert again.job_report(NIGHTLY_1)["vms"][0]["name"] == "secret-db-01"


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "a JSON list, not an object"),
        (json.dumps(report(WEEKLY)).encode(), f"the report of job '{WEEKLY}', not of"),
    ],
)
def test_a_report_that_is_not_its_jobs_is_refused(repo: Repository, body: bytes, why: str) -> None:
    reply = record(repo, NIGHTLY_1, body)
    assert not reply.ok and why in reply.error and "InvalidRequestError" in reply.error
    assert repo.job_ids() == []
    with pytest.raises(InvalidRequestError, match="not a job id"):
        repo.record_job("../../etc", b"{}")


def test_a_report_moved_under_another_name_is_refused_when_read(repo: Repository) -> None:
    record(repo, NIGHTLY_1, report(NIGHTLY_1))
    jobs = repo.path / "jobs"
    (jobs / NIGHTLY_2).write_bytes((jobs / NIGHTLY_1).read_bytes())
    with pytest.raises(CorruptObjectError, match=f"the report of job '{NIGHTLY_1}', not of"):
        repo.job_report(NIGHTLY_2)
    with pytest.raises(JobNotFoundError, match="no job 'weekly-20260101T230000Z-cccccc'"):
        repo.job_report(WEEKLY)


def test_a_job_record_names_a_policys_job() -> None:
    with pytest.raises(MessageError, match="not a job id of a policy"):
        JobRecord("r", "amq.gen-x", "import-1", b"{}")


def test_jobs_commands_read_the_history(
    repo: Repository, capsys: pytest.CaptureFixture[str]
) -> None:
    failed = report(NIGHTLY_2, "failed", error="vcenter vc1: cannot connect", cause="vcenter")
    for doc in (report(NIGHTLY_1), report(WEEKLY), failed):
        record(repo, doc["job_id"], doc)
    capsys.readouterr()  # the handler's log lines
    assert main(["jobs", "list", "--repo", str(repo.path), "--policy", "nightly", "--json"]) == 0
    jobs = json.loads(capsys.readouterr().out)["result"]["jobs"]
    assert [j["job_id"] for j in jobs] == [NIGHTLY_1, NIGHTLY_2]
    assert jobs[1]["status"] == "failed" and jobs[1]["cause"] == "vcenter"
    assert "vms" not in jobs[0]  # the list is the summary; `show` has all of it

    assert main(["jobs", "list", "--repo", str(repo.path), "--last", "2"]) == 0
    out = capsys.readouterr().out
    assert WEEKLY in out and NIGHTLY_2 in out and NIGHTLY_1 not in out
    assert "error: vcenter vc1: cannot connect" in out and "2 job(s)" in out

    assert main(["jobs", "show", "--repo", str(repo.path), NIGHTLY_2, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["result"] == failed
    assert main(["jobs", "show", "--repo", str(repo.path), NIGHTLY_2]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"job {NIGHTLY_2}  policy nightly  status failed")
    assert "error: vcenter vc1: cannot connect" in out

    assert main(["jobs", "show", "--repo", str(repo.path), WEEKLY[:-1] + "d"]) == 1
    assert "no job 'weekly-20260101T230000Z-cccccd' in the job history" in capsys.readouterr().err
    assert main(["jobs", "list", "--repo", str(repo.path), "--last", "0"]) == 1
    assert "--last 0: must be at least 1" in capsys.readouterr().err


def test_jobs_list_of_a_repository_without_history(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "r", chunk_size=256 * 1024)
    assert repo.job_ids() == []
