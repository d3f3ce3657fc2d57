"""Which broker accounts a writer takes commits from and gives stream tokens to.

Any broker client can publish to vmbackup.commits (it is routed through the default
exchange, which every role must write to for its replies), so permissions alone cannot
keep a proxy from sending a CommitRequest, a JobMarker, a JobRecord or a PruneRequest. The guard is
the message's ``user_id``: RabbitMQ refuses a publish whose user_id is not the
connection's user, so it names the real sender, and the writer accepts commits, parts,
markers, job records and prune requests only from the coordinator's account(s), and a task's staged
map entries only from a proxy's (docs/security.md "Broker accounts").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from common.amqp import Delivery, PermanentError
from common.logging import get_logger
from common.messages import Message, TaskEntries
from repository_writer import metrics

log = get_logger("writer")
ROLE_SUFFIX = "-writer"


@dataclass(frozen=True)
class Senders:
    coordinators: frozenset[str]
    proxies: frozenset[str]

    @classmethod
    def for_account(
        cls, own: str, coordinators: Sequence[str] = (), proxies: Sequence[str] = ()
    ) -> Senders:
        """Empty lists follow the naming rule: a writer on ``X-writer`` trusts
        ``X-coordinator`` and ``X-proxy``; a writer on any other account (one account
        shared by every role) trusts only that account."""
        if own.endswith(ROLE_SUFFIX):
            prefix = own[: -len(ROLE_SUFFIX)]
            default_coord, default_proxy = [f"{prefix}-coordinator"], [f"{prefix}-proxy"]
        else:
            default_coord = default_proxy = [own]
        return cls(frozenset(coordinators or default_coord), frozenset(proxies or default_proxy))

    def check_commits_queue(self, msg: Message, d: Delivery) -> None:
        """Refuse (to the dead-letter queue) a commits-queue message from an account not
        allowed to send it: task entries come from proxies, everything else (commits,
        parts, job markers, job records, prune requests) from coordinators."""
        proxy_kind = isinstance(msg, TaskEntries)
        allowed, what = (
            (self.proxies, "proxy") if proxy_kind else (self.coordinators, "coordinator")
        )
        if d.properties.user_id in allowed:  # (not d.sender: "none" is no user)
            return
        metrics.WRITER_COMMITS.labels(result="sender_refused").inc()
        log.error("commit_sender_refused", kind=msg.KIND, sender=d.sender, allowed=sorted(allowed))
        setting = "writer.proxy_users" if proxy_kind else "writer.coordinator_users"
        raise PermanentError(
            f"{msg.KIND} sent by broker user {d.sender!r}, not a {what} account"
            f" ({setting}: {', '.join(sorted(allowed))})"
        )

    def is_proxy(self, d: Delivery) -> bool:
        """Whether the stream token may go to the sender of this have-query."""
        return d.properties.user_id in self.proxies
