"""What the image installs: the project built as a wheel (non-editable, as the Dockerfile's
``pip install .`` does) holds every module and data file, and its entry point runs.

The development venv has the project installed editable, which hides a module or data file
missing from the package list. Here the wheel is built from a copy of exactly what the
Dockerfile copies into its build stage, unpacked, and run with it first on the path.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.k8s.conftest import ROOT

# The build context of the Dockerfile's venv stage (tests/k8s/test_image.py checks the
# COPY lines against .dockerignore; this list is what they copy).
COPIED = ["pyproject.toml", "README.md", "common", "coordinator", "export", "file_restore",
          "proxy_worker", "repository", "repository_writer", "vmbackup"]  # fmt: skip
PACKAGES = ["common", "coordinator", "export", "file_restore", "proxy_worker", "repository",
            "repository_writer", "vmbackup"]  # fmt: skip
# In the source tree for the demo, tests and benchmarks; never in the production wheel.
DEV_ONLY = ["lab", "tests", "bench", "scripts", "k8s"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("context")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "bin")
    for name in COPIED:
        p = ROOT / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=ignore)
        else:
            shutil.copy2(p, src / name)
    out = tmp_path_factory.mktemp("wheel")
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", out, src],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    (whl,) = out.glob("vmbackup-*.whl")
    return whl


def test_wheel_holds_every_module_and_data_file(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*"):
            if "__pycache__" in f.parts or f.is_dir() or f.suffix == ".pyc":
                continue
            rel = f.relative_to(ROOT).as_posix()
            if f.suffix == ".py":
                assert rel in names, f"{rel} is not in the wheel: the image would lack it"
    shipped = {n.split("/", 1)[0] for n in names}
    assert not shipped & set(DEV_ONLY), f"dev-only packages in the wheel: {shipped & set(DEV_ONLY)}"


def test_wheel_entry_point_runs_every_role_command(wheel: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp_path / "site")
        (ep,) = [n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt")]
        entry = configparser.ConfigParser()
        entry.read_string(z.read(ep).decode())
    module, func = entry["console_scripts"]["vmbackup"].split(":")
    # The unpacked wheel first on the path: its modules, not the editable checkout's.
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "PYTHONDONTWRITEBYTECODE": "1"}
    script = (
        "import sys, {m}; assert {m}.__file__.startswith({site!r}), {m}.__file__; "
        "sys.argv[0] = 'vmbackup'; sys.exit({m}.{f}())"
    ).format(m=module, f=func, site=str(tmp_path / "site"))
    commands = [["--help"], ["coordinator", "--help"], ["proxy", "--help"], ["writer", "--help"],
                ["repo", "init", "--help"], ["restore-vm", "--help"],
                ["export", "--help"]]  # fmt: skip
    for args in commands:
        res = subprocess.run(
            [sys.executable, "-c", script, *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert res.returncode == 0, f"vmbackup {' '.join(args)}: {res.stderr[-2000:]}"
        assert "usage: vmbackup" in res.stdout


def test_dev_only_packages_stay_out_of_the_wheel() -> None:
    # The image builds from COPIED only; this keeps a checkout's `pip install .` (the whole
    # tree in the context) from shipping the lab, the tests or the benchmarks either.
    import fnmatch
    import tomllib

    found = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    include = found["packages"]["find"]["include"]
    for name in DEV_ONLY:
        hits = [pat for pat in include if fnmatch.fnmatch(name, pat)]
        assert not hits, f"pyproject's packages include {name}/ through {hits}"
    for name in PACKAGES:
        assert any(fnmatch.fnmatch(name, pat) for pat in include), f"{name}/ not packaged"
