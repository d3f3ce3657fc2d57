"""What the writer's log lines carry while it handles a message: the job, VM, disk, task
or commit the message names (common/logging.py ``bound``), as the proxy's and the
coordinator's lines do: a chunk batch its job and task, a commit part its job, commit and
disk, a prune request its job and policy (the job is "" from a version-1 sender: then
the line does not name one). No kind carries what it does not name."""

from __future__ import annotations

from common.messages import (
    ChunkBatch,
    CommitPart,
    CommitRequest,
    JobMarker,
    Message,
    PruneRequest,
    TaskEntries,
)


def message_context(msg: Message) -> dict[str, str | int]:
    if isinstance(msg, ChunkBatch):
        return {"job": msg.job_id, "task": msg.task_id} if msg.job_id else {"task": msg.task_id}
    if isinstance(msg, TaskEntries):
        return {
            "job": msg.job_id,
            "vm_uuid": msg.vm_uuid,
            "disk": msg.disk_key,
            "task": msg.task_id,
        }
    if isinstance(msg, CommitRequest):
        return {
            "job": msg.job_id,
            "vm": msg.vm_name,
            "vm_moref": msg.vm_moref,
            "commit": msg.request_id,
        }
    if isinstance(msg, CommitPart):
        part: dict[str, str | int] = {"commit": msg.request_id, "disk": msg.disk_key}
        return {"job": msg.job_id, **part} if msg.job_id else part
    if isinstance(msg, JobMarker):
        return {"job": msg.job_id}
    if isinstance(msg, PruneRequest):
        return {"job": msg.job_id, "policy": msg.policy} if msg.job_id else {"policy": msg.policy}
    return {}
