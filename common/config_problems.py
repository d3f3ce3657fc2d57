"""A config's problems, each named by its key path, and how a table reports several.

A settings dataclass validates itself in ``__post_init__``; with :class:`Checks` it
reports every problem it finds (each under its own key) instead of raising at the first,
so that the loader (common/config.py) can list all of them at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a config: its key path ("" = the file itself) and what."""

    key: str
    error: str

    def __str__(self) -> str:
        return f"{self.key}: {self.error}" if self.key else self.error


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """A problem a table finds in itself (``key`` relative to the table), or a check of
    the whole file finds (``key`` from the top). ``depends``: the keys, relative alike,
    whose values it is about, when more than ``key`` itself: when one of them is wrong
    the problem is left out, as it would be about the default standing in."""

    key: str
    error: str
    depends: tuple[str, ...] = ()


class FieldErrors(ValueError):
    """Every problem a table's ``__post_init__`` found: a ValueError naming them all for
    code that builds a table directly, a key path for each for the loader."""

    def __init__(self, problems: Sequence[FieldProblem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"{p.key}: {p.error}" for p in self.problems))


class Checks:
    """Collects a table's problems so that ``__post_init__`` reports all, not the first:

    ``c = Checks()``; ``c.fail("port", "out of range")`` for each; ``c.done()`` at the end
    raises :class:`FieldErrors` when there is any.
    """

    def __init__(self) -> None:
        self.found: list[FieldProblem] = []

    def fail(self, key: str, error: str, *, depends: Iterable[str] = ()) -> None:
        self.found.append(FieldProblem(key, error, tuple(depends)))

    def run(self, key: str, validate: Callable[[], object], **kw: Any) -> None:
        """Run a validator that raises ValueError, as the problem of ``key``."""
        try:
            validate()
        except ValueError as exc:
            self.fail(key, str(exc), **kw)

    def done(self) -> None:
        if self.found:
            raise FieldErrors(self.found)
