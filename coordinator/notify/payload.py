"""What a webhook receives: the job's report (coordinator/report.py, the same mapping as
`backup --report` and the job history) or, for chat, a summary in Slack's
``{"text": ...}``, which Mattermost's incoming webhooks take too."""

from __future__ import annotations

import json
from typing import Any

from coordinator import report

EVENT = "job.finished"  # X-Vmbackup-Event and the body's "event"
SCHEMA = 1  # the body's "schema": a new one only when a field changes meaning or goes
_MARK = {report.OK: ":white_check_mark:", report.PARTIAL: ":warning:", report.FAILED: ":x:"}


def json_body(rep: report.JobReport) -> dict[str, Any]:
    return {"event": EVENT, "schema": SCHEMA, **rep.to_dict()}


def slack_text(rep: report.JobReport) -> str:
    """A few lines a person reads in a channel: status, counts, bytes, why not ok."""
    d = rep.to_dict()
    c = d["counts"]
    lines = [
        f"{_MARK.get(rep.status, ':grey_question:')} vmbackup job `{rep.job_id}`"
        f" (policy {rep.policy}, coordinator {rep.coordinator}): *{rep.status}*",
        f"{c[report.OK]} ok, {c[report.PARTIAL]} partial, {c[report.FAILED]} failed,"
        f" {c[report.SKIPPED]} skipped; read {report.size_text(d['bytes_read'])}, sent"
        f" {report.size_text(d['bytes_sent'])}; {d['seconds']:.0f} s",
    ]
    lines += [f"• {line}" for line in report.failure_lines(rep)]
    if rep.retention is not None:
        lines.append(f"retention ({rep.retention.keep}): {report.retention_summary(rep.retention)}")
    return "\n".join(lines)


def body(fmt: str, rep: report.JobReport) -> bytes:
    """The request body for ``fmt`` (coordinator.webhooks[].format), UTF-8 JSON."""
    doc = {"text": slack_text(rep)} if fmt == "slack" else json_body(rep)
    return json.dumps(doc, separators=(",", ":")).encode()
