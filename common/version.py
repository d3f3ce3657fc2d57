"""vmbackup's version: the installed distribution's (a wheel, an editable install), else
the ``pyproject.toml`` of the source tree these modules are in (run from a checkout)."""

from __future__ import annotations

import functools
import importlib.metadata
import tomllib
from pathlib import Path

DISTRIBUTION = "vmbackup"
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def find_version(distribution: str, pyproject: Path) -> str:
    """``distribution``'s version, else ``[project] version`` of ``pyproject``, else
    "unknown" (a version is for display and metrics: never a reason not to start)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        version = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"]
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown"
    return str(version)


@functools.cache
def package_version() -> str:
    return find_version(DISTRIBUTION, PYPROJECT)
