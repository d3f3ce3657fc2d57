"""Every webhook of the config after a job: the body each one takes, sent when the job's
status is in its ``on``, counted, logged, and what failed said in a line each (stderr of
`vmbackup backup`). A notification never changes the job's status or exit status."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from common.logging import get_logger
from coordinator import metrics
from coordinator.notify.payload import body
from coordinator.notify.webhook import Webhook
from coordinator.report import JobReport
from coordinator.settings import WebhookSettings

log = get_logger(__name__)


class Notifier:
    def __init__(
        self, webhooks: Sequence[WebhookSettings], sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.webhooks = [Webhook(w, sleep) for w in webhooks]

    def notify(self, rep: JobReport) -> list[str]:
        """Send ``rep`` to each webhook that wants its status; why each failure failed."""
        failed = []
        for hook in self.webhooks:
            s = hook.s
            if rep.status not in s.on:
                continue
            out = hook.send(body(s.format, rep), rep.job_id)
            result = "sent" if out.ok else "failed"
            metrics.COORD_NOTIFICATIONS.labels(s.name, result).inc()
            if out.ok:
                log.info(
                    "notification_sent", webhook=s.name, url=hook.origin, attempts=out.attempts
                )
                continue
            log.error(
                "notification_failed",
                webhook=s.name,
                url=hook.origin,
                attempts=out.attempts,
                error=out.error,
            )
            failed.append(
                f"notification to webhook {s.name!r} ({hook.origin}) failed after"
                f" {out.attempts} attempt(s): {out.error}"
            )
        return failed
