"""What a publisher or consumer logs about its broker connection: one warning when it is
lost (or cannot be made at start), with the reason; one info line when it is back, with
how long it was down. The attempts in between log at debug only, so an outage of minutes
is two lines, not one per attempt (pika's own loggers are quieted in common/logging.py)."""

from __future__ import annotations

import time

from common import metrics
from common.logging import get_logger

log = get_logger(__name__)


class Outage:
    """Tracks one connection's outages; used from one thread (its I/O or run thread)."""

    def __init__(self, client: str, name: str) -> None:
        # "publisher" / "consumer"; not "role", which every line carries (the process's)
        self.client = client
        self.name = name
        self._since: float | None = None
        self._attempts = 0
        self._ever_connected = False

    @property
    def down(self) -> bool:
        return self._since is not None

    def failed(self, error: str, retry_in: float | None = None) -> None:
        """An attempt failed or the connection was lost."""
        self._attempts += 1
        if self._since is not None:
            log.debug(
                "broker still unreachable",
                client=self.client,
                name=self.name,
                attempt=self._attempts,
                error=error,
            )
            return
        self._since = time.monotonic()
        log.warning(
            "broker connection lost, reconnecting"
            if self._ever_connected
            else "broker unreachable, retrying",
            client=self.client,
            name=self.name,
            error=error,
            retry_in=None if retry_in is None else round(retry_in, 2),
        )

    def connected(self) -> bool:
        """The connection is up; True when this ends an outage (which is logged)."""
        self._ever_connected = True
        if self._since is None:
            return False
        down = time.monotonic() - self._since
        log.info(
            "broker connection back",
            client=self.client,
            name=self.name,
            down_seconds=round(down, 1),
            attempts=self._attempts,
        )
        metrics.AMQP_RECONNECTS.labels(role=self.name).inc()
        self._since = None
        self._attempts = 0
        return True
