"""A VM's restore point: its disks' results checked against their plans, then one
CommitRequest to the writers naming the map entries the proxies staged there (and with
CommitParts for the inline entries of proxies that do not stage, when they are many)."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

from common import causes
from common.logging import get_logger, in_log_context
from common.messages import CommitPart, CommitRequest, DiskCommit, StagedTask, part_key
from common.packed_entries import pack_entries
from coordinator import metrics, planner, snapshots
from coordinator import vm_config as vm_config_mod
from coordinator.discovery import VmInfo
from coordinator.disk_work import DiskFailed, DiskWork
from coordinator.job_runtime import Runtime, WriterRequestFailed

log = get_logger(__name__)


def check_results(w: DiskWork, chunk_size: int) -> None:
    """Every task ok and its result matching its plan: staged entries as many as the
    task's chunks (the writer checks which at the commit, against the planned ranges),
    inline entries (proxies that do not stage) naming exactly the task's chunks. The
    staged tasks and the sorted inline entries are left in ``w`` for the commit."""
    # a task's own failure first: it names the cause a time-out of its siblings hides
    failures = [r for r in w.results if not r.ok]
    if failures:
        cause = causes.checked(failures[0].cause) or causes.INTERNAL
        for r in failures:
            metrics.COORD_TASK_FAILURES.labels(causes.checked(r.cause) or causes.INTERNAL).inc()
        raise DiskFailed(f"{len(failures)} task(s) failed: {failures[0].error or 'failed'}", cause)
    if w.error:
        raise DiskFailed(w.error, w.cause or causes.INTERNAL)
    by_task = {r.task_id: r for r in w.results}
    planned = {t.task_id: t for t in w.plan.tasks}
    if by_task.keys() != planned.keys():
        missing = len(planned.keys() - by_task.keys())
        extra = len(by_task.keys() - planned.keys())
        raise DiskFailed(f"task results do not match the plan ({missing} missing, {extra} extra)")
    inline: dict[int, bytes] = {}
    staged: list[StagedTask] = []
    for tid, t in planned.items():
        r = by_task[tid]
        w.rep.bytes_read += r.bytes_read
        w.rep.bytes_sent += r.bytes_sent
        expected = planner.chunk_indexes(t.ranges, chunk_size)
        if r.staged:
            if r.entries_count != len(expected):
                raise DiskFailed(
                    f"task {tid}: {r.entries_count} entries staged for its {len(expected)} chunks"
                )
            staged.append(StagedTask(tid, r.entries_digest, r.entries_count))
            continue
        got = {int(idx): bytes(cid) for idx, cid in r.entries}
        if sorted(got) != expected:
            missing = len(set(expected) - set(got))
            extra = len(set(got) - set(expected))
            raise DiskFailed(
                f"task {tid}: entries do not match its plan ({missing} missing, {extra} extra)"
            )
        for idx, cid in got.items():
            if cid and len(cid) != 32:
                raise DiskFailed(f"chunk {idx}: id of {len(cid)} bytes")
        inline.update(got)
    w.entries = sorted(inline.items())
    w.staged = staged


def commit_point(
    rt: Runtime,
    job_id: str,
    vm: VmInfo,
    uuid: str,
    snap: snapshots.Snapshot,
    vm_config: bytes,
    ok: list[DiskWork],
    failed: list[tuple[int, str]],
    status: str,
) -> str:
    """Commit one VM's point on the writers (the request id is the job's and VM's: a
    retried commit is the same commit); return its id."""
    request_id = "c-" + hashlib.sha256(f"{job_id}\0{uuid}".encode()).hexdigest()[:32]
    # controller type and bus per disk, for restore-vm and `repo list` (additive)
    ctrl = vm_config_mod.disk_controllers(vm_config)
    per_part = rt.settings.commit_part_entries
    parts = {w.info.key: stage_parts(rt, request_id, job_id, w, per_part) for w in ok}
    disks = [
        DiskCommit(
            key=w.info.key,
            capacity=w.info.capacity,
            change_id=w.plan.change_id,
            base_point_id=w.plan.decision.base_point_id
            if w.plan.decision.mode == planner.INCREMENTAL
            else "",
            entries=[] if parts[w.info.key] else w.entries,
            tasks=w.staged,
            planned=[(o, n) for o, n in w.plan.ranges],
            info={
                **w.info.point_info(),
                **ctrl.get(w.info.key, {}),
                "mode": w.plan.decision.mode,
                "reason": w.plan.reason,
            },
            parts=parts[w.info.key],
        )
        for w in ok
    ]

    def build(reply_to: str) -> CommitRequest:
        return CommitRequest(
            request_id=request_id,
            reply_to=reply_to,
            job_id=job_id,
            vcenter=vm.vcenter,
            vm_uuid=uuid,
            vm_moref=vm.moref,
            vm_name=vm.name,
            vm_config=vm_config,
            status=status,
            snapshot_time=snap.created,
            disks=disks,
            failed_disks=failed,
        )

    try:
        reply = rt.writer_request(request_id, build, rt.settings.commit_timeout_s, "commit")
    except WriterRequestFailed as exc:
        raise DiskFailed(f"commit failed: {exc}", causes.WRITER_UNREACHABLE) from None
    if not reply.ok:
        raise DiskFailed(f"commit refused by the writer: {reply.error}", causes.COMMIT_REFUSED)
    log.info("point_committed", point=reply.point_id, status=status, disks=len(disks))
    return reply.point_id


def stage_parts(rt: Runtime, request_id: str, job_id: str, w: DiskWork, per_part: int) -> int:
    """Send a large disk's entries as staged CommitParts; return how many (0 = inline)."""
    if len(w.entries) <= per_part:
        return 0
    key = w.info.key
    slices = [w.entries[i : i + per_part] for i in range(0, len(w.entries), per_part)]

    def send(n: int) -> None:
        pid = part_key(request_id, key, n)
        packed = pack_entries(slices[n])
        reply = rt.writer_request(
            pid,
            lambda reply_to: CommitPart(request_id, pid, reply_to, key, n, packed, job_id),
            rt.settings.commit_timeout_s,
            f"commit part {n} of disk {key}",
        )
        if not reply.ok:
            raise DiskFailed(
                f"commit part {n} of disk {key} refused: {reply.error}", causes.COMMIT_REFUSED
            )

    # a few parts in flight: writers stage them in parallel, memory stays bounded
    with ThreadPoolExecutor(4, thread_name_prefix="commit-part") as ex:
        for fut in [ex.submit(in_log_context(send), n) for n in range(len(slices))]:
            try:
                fut.result()
            except WriterRequestFailed as exc:
                raise DiskFailed(f"commit failed: {exc}", causes.WRITER_UNREACHABLE) from None
    log.info("commit_parts_staged", disk=key, parts=len(slices), entries=len(w.entries))
    return len(slices)
