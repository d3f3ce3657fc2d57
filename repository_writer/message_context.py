"""What the writer's log lines carry while it handles a message: the job, VM, disk, task
or commit the message names (common/logging.py ``bound``), as the proxy's and the
coordinator's lines do. A chunk batch names its task only, a commit part its commit and
disk, a prune request its policy: no kind carries what it does not name."""

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
        return {"task": msg.task_id}
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
        return {"commit": msg.request_id, "disk": msg.disk_key}
    if isinstance(msg, JobMarker):
        return {"job": msg.job_id}
    if isinstance(msg, PruneRequest):
        return {"policy": msg.policy}
    return {}
