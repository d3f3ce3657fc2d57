"""CommitRequest (wire) -> PointCommit (the repository library's typed arguments): the
one place where the writer turns a commit message into a repository call."""

from __future__ import annotations

from common.messages import CommitRequest, DiskCommit
from repository.point_commit import DiskChanges, PointCommit, StagedTaskRef


def disk_changes(d: DiskCommit) -> DiskChanges:
    return DiskChanges(
        key=d.key,
        capacity=d.capacity,
        change_id=d.change_id,
        base_point_id=d.base_point_id,
        entries=d.entries,
        parts=d.parts,
        tasks=[StagedTaskRef(t.task_id, t.digest, t.count) for t in d.tasks],
        planned=d.planned,
        info=d.info,
    )


def point_commit(msg: CommitRequest) -> PointCommit:
    return PointCommit(
        request_id=msg.request_id,
        job_id=msg.job_id,
        vcenter=msg.vcenter,
        vm_uuid=msg.vm_uuid,
        vm_moref=msg.vm_moref,
        vm_name=msg.vm_name,
        vm_config=msg.vm_config,
        status=msg.status,
        snapshot_time=msg.snapshot_time,
        disks=[disk_changes(d) for d in msg.disks],
        failed_disks=msg.failed_disks,
    )
