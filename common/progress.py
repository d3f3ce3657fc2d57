"""How a long operation says how far it got, without knowing who shows it.

The libraries (repository/, coordinator/) take a :class:`Progress` callable; the
``vmbackup`` command (vmbackup/progress.py) turns each into a bar on a terminal, a few
plain lines elsewhere, or nothing under ``--json``, and hands a :class:`ProgressBoard` to
the commands of every role as ``args.progress`` (as it hands them ``args.load_config``).
"""

from __future__ import annotations

from typing import Literal, Protocol

Unit = Literal["bytes", "items"]


class Progress(Protocol):
    """``done`` of ``total`` so far (``total`` 0: not known yet). Called as often as the
    work moves: whoever shows it decides how often it is drawn."""

    def __call__(self, done: int, total: int, /) -> None: ...


class ProgressBoard(Protocol):
    """Where a command's progress is shown: one line (a bar) per task."""

    def task(self, label: str, unit: Unit = "bytes") -> Progress: ...

    def note(self, line: str) -> None:
        """A line for the person watching (a VM finished), kept above the bars."""
        ...


def no_progress(_done: int, _total: int, /) -> None:
    """The default of every ``progress`` parameter: nobody watches."""
