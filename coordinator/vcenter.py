"""The coordinator's vCenter connection: a session (common/vcenter_session.py) with its
calls counted in metrics, and the property reads and task waits the coordinator and
restore-vm make."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from pyVmomi import vim, vmodl

from common.vcenter_session import Endpoint, Session, VCenterError
from coordinator import metrics
from coordinator.settings import VCenterSettings

__all__ = ["Connection", "TaskFailed", "VCenterError", "endpoint_of"]


class TaskFailed(VCenterError):
    """A vSphere task ended in error; ``fault`` is the fault vCenter reported."""

    def __init__(self, what: str, fault: Any) -> None:
        msg = getattr(fault, "msg", None) or type(fault).__name__
        super().__init__(f"{what}: {type(fault).__name__}: {msg}")
        self.fault = fault


def endpoint_of(s: VCenterSettings) -> Endpoint:
    return Endpoint(
        name=s.name,
        url=s.url,
        user=s.user.value,
        password=s.password.value,
        user_source=s.user.source,
        password_source=s.password.source,
        ca_bundle=s.ca_bundle,
        thumbprint=s.thumbprint,
        insecure=s.insecure,
        timeout_s=s.timeout_s,
        keepalive_s=s.keepalive_s,
        retries=s.retries,
        backoff_s=s.backoff_s,
    )


class Connection(Session):
    """One logged-in vCenter session of the coordinator, safe to share between threads."""

    def __init__(
        self,
        settings: VCenterSettings,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(endpoint_of(settings), sleep)
        self.settings = settings

    def connect(self) -> Connection:
        super().connect()
        return self

    def __enter__(self) -> Connection:
        return self

    def _counted(self, method: str) -> None:
        metrics.COORD_VCENTER_CALLS.labels(self.name).inc()

    def _relogged(self) -> None:
        metrics.COORD_VCENTER_RELOGINS.labels(self.name).inc()

    def moref(self, type_name: str, value: str) -> Any:
        """A managed object of this connection from its type and moref value."""
        return getattr(vim, type_name)(value, self._stub)

    def get_properties(self, obj: Any, paths: Iterable[str]) -> dict[str, Any]:
        """Selected properties of one object in one round trip (missing ones absent)."""
        pc = self.content.propertyCollector
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=obj, skip=False)],
            propSet=[
                vmodl.query.PropertyCollector.PropertySpec(
                    type=type(obj), pathSet=list(paths), all=False
                )
            ],
        )
        res = pc.RetrievePropertiesEx([spec], vmodl.query.PropertyCollector.RetrieveOptions())
        out: dict[str, Any] = {}
        if res is not None:
            for oc in res.objects:
                for p in oc.propSet or []:
                    out[p.name] = p.val
        return out

    def wait_task(self, task: Any, what: str, timeout_s: float) -> Any:
        """Wait for a task by polling only state, error and result; return the result.

        Reading the whole TaskInfo is avoided: its entity can be of a type pyVmomi's
        checks reject (a removed snapshot), and it is larger than needed.
        """
        deadline = time.monotonic() + timeout_s
        delay = 0.05
        while True:
            props = self.get_properties(task, ["info.state", "info.error", "info.result"])
            state = props.get("info.state")
            if state == vim.TaskInfo.State.success:
                return props.get("info.result")
            if state == vim.TaskInfo.State.error:
                raise TaskFailed(what, props.get("info.error"))
            left = deadline - time.monotonic()
            if left <= 0:
                raise VCenterError(f"{what}: task {task._moId} not done after {timeout_s:.0f}s")
            time.sleep(min(delay, left))
            delay = min(delay * 1.6, 2.0)
