"""The coordinator daemon: cron schedules per policy, periodic orphan sweeps, resume.
Each job applies its policy's retention when its window's backups are done (job.py),
then its report goes to the webhooks (notify/).

Resume without a private database: at start every vCenter is swept; a snapshot of
ours whose job is not running is an unfinished job of an earlier run (this
coordinator died). It is removed, and the job's policy (the job id starts with it)
is started over at once.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable

from croniter import croniter

from common.job_ids import policy_of_job
from common.logging import get_logger
from coordinator.job import Job
from coordinator.job_runtime import Runtime
from coordinator.notify.notifier import Notifier
from coordinator.report import JobReport
from coordinator.restored_metrics import restore_metrics
from coordinator.settings import PolicySettings

log = get_logger(__name__)


class Daemon:
    def __init__(
        self,
        rt: Runtime,
        policies: list[PolicySettings],
        clock: Callable[[], dt.datetime] = dt.datetime.now,
        *,
        notifier: Notifier | None = None,
    ) -> None:
        self.rt = rt
        self.notifier = notifier
        self.policies = {p.name: p for p in policies}
        self.clock = clock
        self._stop = threading.Event()
        self._jobs_sem = threading.BoundedSemaphore(rt.settings.limits.jobs)
        self._running: dict[str, Job] = {}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.reports: list[JobReport] = []
        self.resumed: set[str] = set()
        self.unfinished_jobs: set[str] = set()  # job ids of earlier runs found unfinished

    def stop(self) -> None:
        self._stop.set()

    def sweep_all(self) -> set[str]:
        """Sweep every vCenter; return the policies of unfinished jobs found."""
        unfinished: set[str] = set()
        for conn in list(self.rt.connections.values()):
            try:
                res = self.rt.sweep(conn)
            except Exception as exc:
                log.error("orphan_sweep_failed", vcenter=conn.name, error=str(exc))
                continue
            for s in res.found:
                p = policy_of_job(s.job_id)
                if p in self.policies:
                    unfinished.add(p)
                    self.unfinished_jobs.add(s.job_id)
        return unfinished

    def end_stale_markers(self) -> None:
        """End the running-backup markers of unfinished jobs of an earlier run: left
        alone they would hold back gc for days (repository/gc.py)."""
        for job_id in sorted(self.unfinished_jobs - self.rt.running_jobs()):
            try:
                self.rt.job_marker(job_id, "end")
            except Exception as exc:
                log.warning("stale_job_marker_not_ended", job=job_id, error=str(exc))
            else:
                log.info("stale_job_marker_ended", job=job_id)

    def start_job(self, name: str, why: str) -> bool:
        with self._lock:
            if name in self._running:
                log.warning("job_still_running_skipping_run", policy=name, why=why)
                return False
            job = Job(self.rt, self.policies[name], sweep_first=False)
            self._running[name] = job
        t = threading.Thread(target=self._run_job, args=(job,), name=f"job-{name}", daemon=True)
        self._threads.append(t)
        t.start()
        log.info("job_scheduled", policy=name, job=job.job_id, why=why)
        return True

    def _run_job(self, job: Job) -> None:
        try:
            while not self._jobs_sem.acquire(timeout=1.0):
                if self._stop.is_set():
                    return
            try:
                if self._stop.is_set():
                    return
                rep = job.run()
                self.reports.append(rep)
            finally:
                self._jobs_sem.release()
            if self.notifier is not None:  # with its retries, outside the jobs' limit
                self.notifier.notify(rep)
        finally:
            with self._lock:
                self._running.pop(job.policy.name, None)

    def run(self, max_seconds: float | None = None) -> None:
        t_end = None if max_seconds is None else time.monotonic() + max_seconds
        restore_metrics(self.rt.history.repo, self.policies)
        self.resumed = self.sweep_all()
        self.end_stale_markers()
        for name in sorted(self.resumed):
            self.start_job(name, "resume: an earlier run left this job unfinished")
        now = self.clock()
        next_run = {
            n: croniter(p.schedule, now).get_next(dt.datetime)
            for n, p in self.policies.items()
            if p.schedule
        }
        next_sweep = time.monotonic() + self.rt.settings.orphan_sweep_s
        log.info("coordinator_started", schedules={n: t.isoformat() for n, t in next_run.items()})
        while not self._stop.is_set():
            if t_end is not None and time.monotonic() >= t_end:
                break
            now = self.clock()
            for name, when in list(next_run.items()):
                if now >= when:
                    self.start_job(name, f"schedule {self.policies[name].schedule}")
                    next_run[name] = croniter(self.policies[name].schedule, now).get_next(
                        dt.datetime
                    )
            if time.monotonic() >= next_sweep:
                self.sweep_all()
                next_sweep = time.monotonic() + self.rt.settings.orphan_sweep_s
            self._stop.wait(1.0)
        self.shutdown()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no job runs (tests, and a clean stop); True when idle."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._running:
                    return True
            time.sleep(0.1)
        return False

    def shutdown(self, timeout: float = 300.0) -> None:
        """Cancel running jobs (their snapshots are removed as they unwind) and wait."""
        with self._lock:
            jobs = list(self._running.values())
        for j in jobs:
            j.cancel.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
