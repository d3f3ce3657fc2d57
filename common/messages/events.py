"""Observability: job events for whoever listens."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from common.messages.base import Message, Scalar


@dataclass(frozen=True, slots=True)
class JobEvent(Message):
    KIND: ClassVar[str] = "job-event"
    job_id: str
    event: str
    vm: str
    disk_key: int
    ts: float
    fields: dict[str, Scalar] = field(default_factory=dict)
