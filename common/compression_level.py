"""The zstd levels a repository may use, checked wherever a level crosses a boundary
(the repository's config, a backup task)."""

from __future__ import annotations

# zstd levels a repository may use. 0 stores chunks uncompressed; 1..22 are zstd's levels;
# -1..-10 are its fast levels (``zstd --fast=N``): about lz4's speed and ratio, for a
# repository that would rather spend less CPU than disk (docs/repository-format.md).
MIN_LEVEL = -10
MAX_LEVEL = 22


def level_problem(level: object) -> str | None:
    """Why ``level`` is no compression level a repository or a task may carry, or None."""
    if not isinstance(level, int) or isinstance(level, bool) or not MIN_LEVEL <= level <= MAX_LEVEL:
        return (
            f"compression level {level!r:.40} outside {MIN_LEVEL}..{MAX_LEVEL} "
            "(0 = none, negative = zstd's fast levels)"
        )
    return None
