"""Why a task, a disk or a VM failed: one short word from a fixed list.

The component that saw the failure names its cause (the writer: its repository is full;
the proxy: reading the disk failed; the coordinator: no result in time) and every message,
report line and metric above it carries that word unchanged. The list is closed so that
a cause is fit as a Prometheus label (bounded cardinality) and as a field an operator can
alert on or script against; the free text beside it says the rest.
"""

from __future__ import annotations

REPOSITORY_FULL = "repository_full"  # a writer's file system is full or below its floor
REPOSITORY_ERROR = "repository_error"  # a writer refused data for another reason
WRITER_UNREACHABLE = "writer_unreachable"  # no answer from a writer after the retries
DISK_READ = "disk_read"  # the proxy could not read the snapshot's disk
BAD_TASK = "bad_task"  # the task itself is malformed
PROXY_CONFIG = "proxy_config"  # the proxy's configuration cannot serve the task
TASK_TIMEOUT = "task_timeout"  # the coordinator got no result in time
BROKER = "broker"  # a message could not be published or routed
VCENTER = "vcenter"  # a vCenter call failed (snapshot, CBT, inventory)
COMMIT_REFUSED = "commit_refused"  # the writer refused the restore point
CANCELLED = "cancelled"  # the job was cancelled or its window closed
INTERNAL = "internal"  # anything else: a bug; the text and the logs say more

ALL = (
    REPOSITORY_FULL,
    REPOSITORY_ERROR,
    WRITER_UNREACHABLE,
    DISK_READ,
    BAD_TASK,
    PROXY_CONFIG,
    TASK_TIMEOUT,
    BROKER,
    VCENTER,
    COMMIT_REFUSED,
    CANCELLED,
    INTERNAL,
)


def checked(cause: str) -> str:
    """``cause`` if it is one of the list (or ""), else INTERNAL: a peer of another
    version may send a word this one does not know, and labels must stay bounded."""
    return cause if cause == "" or cause in ALL else INTERNAL
