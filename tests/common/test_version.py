"""`vmbackup --version`: the installed distribution's version, else the source tree's."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

from common.version import PYPROJECT, find_version, package_version


def test_the_installed_distribution_comes_first() -> None:
    assert package_version() == importlib.metadata.version("vmbackup")


def test_without_a_distribution_the_pyproject_version(tmp_path: Path) -> None:
    own = tomllib.loads(PYPROJECT.read_text())["project"]["version"]
    assert find_version("vmbackup-not-installed", PYPROJECT) == own
    other = tmp_path / "pyproject.toml"
    other.write_text('[project]\nname = "x"\nversion = "9.8.7"\n')
    assert find_version("vmbackup-not-installed", other) == "9.8.7"
    assert find_version("vmbackup-not-installed", tmp_path / "absent.toml") == "unknown"
    other.write_text("[project]\nname = 'x'\n")  # no version: nothing to make up
    assert find_version("vmbackup-not-installed", other) == "unknown"


def test_version_flag() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "vmbackup", "--version"], capture_output=True, text=True, check=False
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"vmbackup {importlib.metadata.version('vmbackup')}\n"
