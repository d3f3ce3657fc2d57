"""Why a publish failed: retried failures end in :class:`PublishError`; a message that
can never be published fails at once with :class:`UnpublishableError`."""

from __future__ import annotations


class PublishError(RuntimeError):
    """A message could not be confirmed by the broker."""


class UnroutableError(PublishError):
    """The broker returned a mandatory message: no queue is bound for its routing key."""


class UnpublishableError(PublishError):
    """The message itself can never be published: a name or property that AMQP cannot
    carry, or a body over the size limit. Failed at once and never retried (retrying would
    block every message behind it); ``reason`` is one of :data:`DROP_REASONS`."""

    def __init__(self, reason: str, text: str) -> None:
        super().__init__(text)
        self.reason = reason


# The bounded label values of vmbackup_amqp_publish_dropped_total{reason}.
DROP_REASONS = ("bad_name", "bad_properties", "too_large", "send_failed")
