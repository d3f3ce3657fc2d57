"""What a one-shot command reports, for the ``vmbackup`` command to print.

A command of any role returns a :class:`CommandResult`; the application prints it
(vmbackup/json_output.py): ``text`` on stdout and ``reasons`` on stderr, or under
``--json`` one document holding ``result`` and the error (docs/cli-json.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class CommandResult:
    exit: int  # the exit status (docs/operations.md, "Exit codes")
    text: str = ""  # for people, on stdout (without --json)
    result: dict[str, Any] | None = None  # the JSON document's "result"
    # why ``exit`` is not 0, one line each (the first is the error's "message"); and its
    # cause, one word (docs/cli-json.md: the JSON error's "cause")
    reasons: list[str] = field(default_factory=list)
    cause: str = ""
    warnings: list[str] = field(default_factory=list)  # stderr either way; and in the JSON

    @classmethod
    def failed(cls, exit: int, reason: str, cause: str, **kw: Any) -> CommandResult:
        return cls(exit=exit, reasons=[reason], cause=cause, **kw)

    def found(self, exit: int, cause: str, reasons: list[str]) -> CommandResult:
        """This result, of a command that ran and found something wrong: its status,
        cause and reasons (its text and document stand)."""
        self.exit, self.cause, self.reasons = exit, cause, reasons
        return self
