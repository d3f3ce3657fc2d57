"""A coordinator stand-in on the commits queue: publishes a request, waits for its reply."""

from __future__ import annotations

from common.amqp import QUEUE_COMMITS, BrokerParams, Publisher, ReplyQueue
from common.messages import CommitReply, Message


class CommitClient:
    def __init__(self, broker: BrokerParams, name: str) -> None:
        self.pub = Publisher(broker, name=name)
        self.replies = ReplyQueue(broker, name=f"{name}-replies")

    @property
    def reply_to(self) -> str:
        return self.replies.name

    def ask(self, msg: Message, key: str, timeout: float = 60.0) -> CommitReply:
        """Publish ``msg`` on the commits queue; the reply correlated by ``key``."""
        fut = self.replies.expect(key)
        self.pub.publish_sync("", QUEUE_COMMITS, msg)
        reply = fut.result(timeout=timeout)
        assert isinstance(reply, CommitReply)
        return reply

    def close(self) -> None:
        self.replies.close()
        self.pub.close()
