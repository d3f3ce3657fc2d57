"""`--help` of every command shows examples, and every option says what it does."""

from __future__ import annotations

import argparse

from tests.vmbackup.conftest import vmb
from vmbackup.cli import build_parser, commands


def test_every_command_has_examples_and_every_option_help() -> None:
    root = build_parser()
    found = [("vmbackup", root), *commands(root)]
    missing: list[str] = []
    for name, p in found:
        if "examples:" not in (p.epilog or ""):
            missing.append(f"{name}: no 'examples:' epilog")
        if not issubclass(p.formatter_class, argparse.RawDescriptionHelpFormatter):
            missing.append(f"{name}: its examples are rewrapped (RawDescriptionHelpFormatter)")
        for a in p._actions:
            if isinstance(a, argparse._HelpAction | argparse._SubParsersAction):
                continue
            if not a.help or a.help == argparse.SUPPRESS:
                missing.append(f"{name}: {'/'.join(a.option_strings) or a.dest} has no help")
    # the walk saw the commands of every role, the nested ones included
    names = {n for n, _ in found}
    assert {"backup", "restore", "restore-vm", "verify", "prune", "repo list", "config check"} <= (
        names
    )
    assert not missing, "\n".join(missing)


def test_help_shows_the_examples_unwrapped() -> None:
    r = vmb("restore", "--help")
    assert r.returncode == 0, r.stderr
    tail = r.stdout.split("examples:\n", 1)[1]
    assert "  vmbackup restore --repo /backup/repo --point 20240501T220012Z-1a2b3c4d \\\n" in tail
    assert "restore point id" in r.stdout  # --point's help
