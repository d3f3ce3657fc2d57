"""CBT change ids: ``"<uuid>/<sequence>"`` (the uuid part may contain spaces).

A changeId whose uuid part differs from the snapshot's current one means tracking
was reset since it was taken: it cannot be the base of an incremental.
"""

from __future__ import annotations

from dataclasses import dataclass

ALL_ALLOCATED = "*"  # asks QueryChangedDiskAreas for the allocated areas


class ChangeIdError(ValueError):
    """Not a well-formed changeId."""


@dataclass(frozen=True, slots=True)
class ChangeId:
    uuid: str
    seq: int

    def __str__(self) -> str:
        return f"{self.uuid}/{self.seq}"


def parse(text: str) -> ChangeId:
    if not isinstance(text, str) or not text:
        raise ChangeIdError("empty changeId")
    if text == ALL_ALLOCATED:
        raise ChangeIdError("'*' is a query argument, not a stored changeId")
    uuid, sep, seq = text.rpartition("/")
    if not sep or not uuid.strip():
        raise ChangeIdError(f"changeId {text!r}: expected '<uuid>/<sequence>'")
    if not seq.isascii() or not seq.isdigit():
        raise ChangeIdError(f"changeId {text!r}: sequence {seq!r} is not a number")
    if "/" in uuid:
        raise ChangeIdError(f"changeId {text!r}: more than one '/'")
    return ChangeId(uuid=uuid, seq=int(seq))


def same_epoch(stored: str, current: str) -> bool:
    """True when both parse and their uuid parts match (tracking was not reset)."""
    try:
        return parse(stored).uuid == parse(current).uuid
    except ChangeIdError:
        return False
