"""One broker account per role, and the RabbitMQ permissions each role needs.

The patterns follow what each role declares (configure), publishes to or binds a queue
to (write) and consumes or binds from (read) -- see common/amqp.py's topology. Every
role declares the base topology (declare_base) at start, so each configures those
names. Only writers read the shard queues and vmbackup.commits; the coordinator is the
only role writing to vmbackup.tasks and vmbackup.withdrawals. Commits go through the
default exchange (amq.default), which every role must write to for its replies, so the
permissions cannot say "only the coordinator commits": the writer's user_id check
(repository_writer/senders.py) does. docs/security.md "Broker accounts" explains each.
The lab (lab/broker_accounts.py) and tests/k8s use this table, so the two cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("coordinator", "proxy", "writer")

# Names every role declares (declare_base): exchanges, the DLQ and the commits queue.
_BASE = r"vmbackup\.(dlx|dlq|tasks|shards|events|withdrawals|commits)"
# Server-named exclusive queues (reply queues, the proxies' withdrawal queues).
_EXCLUSIVE = r"amq\.gen-.*"


@dataclass(frozen=True)
class Permission:
    configure: str
    write: str
    read: str


PERMISSIONS: dict[str, Permission] = {
    "coordinator": Permission(
        configure=rf"^({_BASE}|vmbackup\.results\..+|{_EXCLUSIVE})$",
        # tasks, withdrawals, events; commits and markers via the default exchange;
        # the DLX (dead-lettering) and the DLQ (its binding).
        write=r"^(amq\.default|vmbackup\.(tasks|withdrawals|events|dlx|dlq))$",
        read=rf"^(vmbackup\.results\..+|{_EXCLUSIVE}|vmbackup\.dlx)$",
    ),
    "proxy": Permission(
        configure=rf"^({_BASE}|vmbackup\.tasks\..+|{_EXCLUSIVE})$",
        # chunk batches and have-queries; task results via the default exchange; the
        # bindings of its task queues, withdrawal queue and the DLQ.
        write=rf"^(amq\.default|vmbackup\.(shards|dlx|dlq)|vmbackup\.tasks\..+|{_EXCLUSIVE})$",
        read=rf"^(vmbackup\.tasks(\..+)?|vmbackup\.withdrawals|vmbackup\.dlx|{_EXCLUSIVE})$",
    ),
    "writer": Permission(
        configure=rf"^({_BASE}|vmbackup\.shard\.[0-9]+)$",
        # replies via the default exchange; dead-lettering; its shard queues' bindings.
        write=r"^(amq\.default|vmbackup\.(dlx|dlq)|vmbackup\.shard\.[0-9]+)$",
        read=r"^(vmbackup\.shard\.[0-9]+|vmbackup\.commits|vmbackup\.shards|vmbackup\.dlx)$",
    ),
}


def account_name(prefix: str, role: str) -> str:
    """The naming rule writers rely on by default: ``<prefix>-<role>``."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: {', '.join(ROLES)}")
    return f"{prefix}-{role}"
