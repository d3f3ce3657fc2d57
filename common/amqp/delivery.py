"""What the consumer knows of one delivered message: the delivery, errors that make it
permanent, and how often it failed."""

from __future__ import annotations

import collections
import hashlib
import threading
from dataclasses import dataclass
from typing import Any

from pika.spec import BasicProperties


class FailureCounts:
    """How many times a message failed its handler. A quorum queue counts deliveries in
    ``x-delivery-count``; a classic queue (the shard queues, by default) does not, and a
    sender may put any value there: so failures are also counted here, per queue and body,
    and the larger count wins. Without it a message whose handler always fails went round
    a classic queue for ever."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._counts: collections.OrderedDict[tuple[str, bytes], int] = collections.OrderedDict()
        self._lock = threading.Lock()

    def failed(self, d: Delivery) -> int:
        """Count one more failure of ``d``; returns its attempt number (1 = first)."""
        key = (d.queue, hashlib.blake2b(d.body, digest_size=16).digest())
        with self._lock:
            n = self._counts.pop(key, 0) + 1
            self._counts[key] = n
            while len(self._counts) > self._size:
                self._counts.popitem(last=False)
        # x-delivery-count counts earlier deliveries; this one makes one more.
        return max(n, d.delivery_count + 1)


class PermanentError(Exception):
    """The message can never be handled: dead-letter it at once with this reason."""


@dataclass
class Delivery:
    """A message as delivered, for handlers that need more than the decoded body."""

    queue: str
    routing_key: str
    redelivered: bool
    delivery_count: int
    headers: dict[str, Any]
    properties: BasicProperties
    body: bytes
    tag: int = 0
    generation: int = 0

    @property
    def sender(self) -> str:
        """The account that published it: its ``user_id``, which the broker checked
        against the publisher's connection, or "none" when the publisher set none."""
        return str(self.properties.user_id or "none")
