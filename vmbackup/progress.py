"""The progress display of every `vmbackup` command: bars on a terminal, lines elsewhere.

One :func:`progress_board` per command run (vmbackup/cli.py puts it on the arguments as
``args.progress``); the libraries only see the ``common.progress.Progress`` callables its
tasks return. Three ways to show the same calls:

* a terminal (stderr is a TTY, TERM not "dumb"): a rich bar per task with bytes (or
  items), rate and ETA, redrawn in place, the notes printed above them;
* anything else (a pipe, a file, a Job's log): a plain line per task at each tenth of
  its total, at least every LINE_SECONDS while it moves, and its final state at the end:
  a log keeps a few lines, never a redrawn bar;
* ``--json``: nothing at all (stdout is the document; stderr keeps only the errors).

Progress goes to stderr in every mode: stdout is the command's result (or a restored
image, with ``restore --out -``).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO

from common.progress import Progress, ProgressBoard, Unit
from vmbackup.repo_commands import _human

LINE_SECONDS = 30.0  # a line per task at least this often in line mode, while it moves
STEPS = 10  # line mode: a line each time a task crosses another tenth of its total


def amount(done: int, total: int, unit: Unit) -> str:
    """``done`` (of ``total``, when known) in the task's unit: "1.5 GiB of 4.0 GiB (37%)"."""
    fmt = _human if unit == "bytes" else str
    if total <= 0:
        return fmt(done)
    return f"{fmt(done)} of {fmt(total)} ({100 * done // total}%)"


def rate_and_eta(done: int, total: int, unit: Unit, seconds: float) -> str:
    """ "120.0 MiB/s, ETA 42 s" (no ETA while the total is unknown)."""
    if seconds <= 0 or done <= 0:
        return ""
    per_s = done / seconds
    rate = f"{_human(per_s)}/s" if unit == "bytes" else f"{per_s:.1f}/s"
    if total <= 0 or done >= total:
        return rate
    return f"{rate}, ETA {eta_text((total - done) / per_s)}"


def eta_text(seconds: float) -> str:
    s = int(seconds + 0.5)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s // 60 % 60:02d} min"


# --- quiet (--json) --------------------------------------------------------------------


def _ignore(_done: int, _total: int, /) -> None:
    pass


class QuietBoard:
    def task(self, label: str, unit: Unit = "bytes") -> Progress:
        return _ignore

    def note(self, line: str) -> None:
        pass

    def close(self) -> None:
        pass


# --- lines (not a terminal) ------------------------------------------------------------


@dataclass
class _LineTask:
    label: str
    unit: Unit
    started: float = field(default_factory=time.monotonic)
    done: int = 0
    total: int = 0
    step: int = -1  # the last tenth a line was printed for
    printed_at: float = 0.0
    printed: tuple[int, int] = (-1, -1)  # (done, total) of the last line


class LineBoard:
    """A line per task at each tenth of its total (or every LINE_SECONDS), then its end."""

    def __init__(self, stream: TextIO, prog: str) -> None:
        self.stream, self.prog = stream, prog
        self._tasks: list[_LineTask] = []
        self._lock = threading.Lock()

    def task(self, label: str, unit: Unit = "bytes") -> Progress:
        t = _LineTask(label, unit)
        with self._lock:
            self._tasks.append(t)

        def update(done: int, total: int, /) -> None:
            now = time.monotonic()
            with self._lock:
                t.done, t.total = done, total
                step = done * STEPS // total if total > 0 else -1
                if step > t.step or now - t.printed_at >= LINE_SECONDS:
                    t.step = max(step, t.step)
                    self._line(t, now)

        return update

    def note(self, line: str) -> None:
        with self._lock:
            print(f"{self.prog}: {line}", file=self.stream, flush=True)

    def close(self) -> None:
        """Each task's last state, unless its last line said it already."""
        now = time.monotonic()
        with self._lock:
            for t in self._tasks:
                if t.printed != (t.done, t.total):
                    self._line(t, now)

    def _line(self, t: _LineTask, now: float) -> None:
        t.printed_at, t.printed = now, (t.done, t.total)
        speed = rate_and_eta(t.done, t.total, t.unit, now - t.started)
        tail = f", {speed}" if speed else ""
        print(
            f"{self.prog}: {t.label}: {amount(t.done, t.total, t.unit)}{tail}",
            file=self.stream,
            flush=True,
        )


# --- a terminal (rich) -----------------------------------------------------------------


class TerminalBoard:
    """rich bars: started with the first task, so a command that shows none draws nothing."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._progress: Any = None
        self._lock = threading.Lock()

    def _bars(self) -> Any:
        with self._lock:
            if self._progress is None:
                self._progress = _rich_progress(self.stream)
                self._progress.start()
            return self._progress

    def task(self, label: str, unit: Unit = "bytes") -> Progress:
        bars = self._bars()
        tid = bars.add_task(label, total=None, unit=unit)

        def update(done: int, total: int, /) -> None:
            bars.update(tid, completed=done, total=total if total > 0 else None)

        return update

    def note(self, line: str) -> None:
        self._bars().console.print(line, highlight=False, markup=False)

    def close(self) -> None:
        with self._lock:
            if self._progress is not None:
                self._progress.stop()


def _rich_progress(stream: TextIO) -> Any:
    # Imported here: a command that is not on a terminal never loads rich.
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        ProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as RichProgress
    from rich.text import Text

    class AmountColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            total = int(task.total) if task.total else 0
            return Text(amount(int(task.completed), total, task.fields["unit"]))

    class RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            if not speed:
                return Text("")
            if task.fields["unit"] == "bytes":
                return Text(f"{_human(speed)}/s")
            return Text(f"{speed:.1f}/s")

    return RichProgress(
        TextColumn("{task.description}"),
        BarColumn(),
        AmountColumn(),
        RateColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(file=stream),
        refresh_per_second=4,
    )


# --- which one ---------------------------------------------------------------------------


def on_terminal(stream: TextIO) -> bool:
    return stream.isatty() and os.environ.get("TERM", "") != "dumb"


@contextmanager
def progress_board(
    *, quiet: bool = False, stream: TextIO | None = None, prog: str = "vmbackup"
) -> Iterator[ProgressBoard]:
    """The board for one command run: quiet (``--json``), rich bars when ``stream``
    (stderr) is a terminal, else lines; closed (bars stopped, last lines printed) after."""
    out = stream or sys.stderr
    board: QuietBoard | LineBoard | TerminalBoard
    if quiet:
        board = QuietBoard()
    elif on_terminal(out):
        board = TerminalBoard(out)
    else:
        board = LineBoard(out, prog)
    try:
        yield board
    finally:
        board.close()
