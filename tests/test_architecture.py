"""The package layout is the architecture: these imports must never exist.

Every import of every production module is read with ``ast`` (module level and inside
functions, ``import x`` and ``from x import y``, relative ones resolved, and
``importlib.import_module`` with a literal), so an arrow hidden in a function body is
found as well. docs/architecture.md draws the arrows that exist and these forbidden ones.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION = [
    "common",
    "repository",
    "coordinator",
    "proxy_worker",
    "repository_writer",
    "vmbackup",
    "export",
    "file_restore",
]
ROLES = ["coordinator", "proxy_worker", "repository_writer"]
DEV_ONLY = ["lab", "tests", "bench", "scripts"]

# package -> packages it must never import (directly, anywhere in its modules)
FORBIDDEN: dict[str, set[str]] = {
    # common is what every role shares: it knows none of them
    "common": {*ROLES, "repository", "vmbackup"},
    # the repository library is used by roles, never the other way round
    "repository": {*ROLES, "vmbackup"},
    # the writer serves the repository; it knows neither the coordinator nor the proxy
    "repository_writer": {"coordinator", "proxy_worker", "vmbackup"},
    # a proxy reads disks and sends chunks; it knows neither the coordinator nor the writer
    "proxy_worker": {"coordinator", "repository_writer", "vmbackup"},
    # the coordinator talks to writers through the broker only
    "coordinator": {"repository_writer", "vmbackup"},
    # the export's server process reads the repository through the library only
    "export": {*ROLES, "vmbackup"},
    # file restore opens a disk through the export; the command line drives it
    "file_restore": {*ROLES, "vmbackup"},
}
for _pkg in PRODUCTION:
    FORBIDDEN.setdefault(_pkg, set()).update(DEV_ONLY)


def _modules(pkg: str) -> Iterator[Path]:
    yield from sorted((ROOT / pkg).rglob("*.py"))


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in one file."""
    package = path.relative_to(ROOT).parts[:-1]  # the package a relative import starts from
    yield from _imports_in(path.read_text(), package)


def _imports_in(source: str, package: tuple[str, ...]) -> Iterator[tuple[int, str]]:
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                yield node.lineno, ".".join([*base, *([node.module] if node.module else [])])
            elif node.module:
                yield node.lineno, node.module
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if name == "import_module":
                arg = node.args[0] if node.args else None
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    yield node.lineno, arg.value
                else:  # a registry the import graph cannot see
                    yield node.lineno, "<dynamic import>"


def _graph() -> dict[str, list[tuple[str, int, str]]]:
    """package -> [(file, line, imported top-level package)]."""
    out: dict[str, list[tuple[str, int, str]]] = {}
    for pkg in PRODUCTION:
        rows = out.setdefault(pkg, [])
        for path in _modules(pkg):
            rel = path.relative_to(ROOT).as_posix()
            for line, name in _imports(path):
                rows.append((rel, line, name.split(".")[0]))
    return out


@pytest.mark.parametrize("pkg", PRODUCTION)
def test_no_forbidden_import(pkg: str) -> None:
    bad = [
        f"{rel}:{line} imports {target}"
        for rel, line, target in _graph()[pkg]
        if target in FORBIDDEN[pkg] or target == "<dynamic import>"
    ]
    assert not bad, f"{pkg} must not import {sorted(FORBIDDEN[pkg])}:\n" + "\n".join(bad)


def test_the_walk_sees_function_level_relative_and_dynamic_imports() -> None:
    src = (
        "def f():\n"
        "    import coordinator.job\n"
        "    importlib.import_module(name)\n"
        "    from ..amqp_wire import install\n"
        "    importlib.import_module('repository_writer.cli')\n"
    )
    found = list(_imports_in(src, ("common", "amqp")))
    assert (2, "coordinator.job") in found
    assert (3, "<dynamic import>") in found
    assert (4, "common.amqp_wire") in found
    assert (5, "repository_writer.cli") in found


def test_every_production_package_is_checked() -> None:
    on_disk = {
        p.parent.name
        for p in ROOT.glob("*/__init__.py")
        if p.parent.name not in {*DEV_ONLY, "examples", "k8s", "docs"}
    }
    assert on_disk == set(PRODUCTION), f"packages not covered: {on_disk ^ set(PRODUCTION)}"
