"""How every `vmbackup` command prints what it did: text, or one JSON document (--json).

A command returns a ``common.command_result.CommandResult``; :func:`emit` prints it. Under
``--json`` stdout holds exactly one document, success or not (docs/cli-json.md):

    {"ok": bool, "command": "repo list", "exit": 0, "result": {...} | null,
     "error": null | {"message": str, "cause": str, "reasons": [str]}, "warnings": [str]}

``ok`` is ``exit == 0``; ``exit`` is the process's exit status (docs/operations.md,
"Exit codes"); ``result`` is the command's own document (null when it got nowhere);
``error`` says why ``exit`` is not 0: ``message`` is the first reason, ``reasons`` all
of them, ``cause`` one word of CAUSES (a backup's own causes: common/causes.py). The
reasons go to stderr as well, as they do without ``--json``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from common.command_result import CommandResult

SCHEMA = 1  # bumped when a field of the envelope changes meaning or goes away

# The error causes of the commands outside a backup job (whose causes are
# common/causes.py's), and what each means.
CAUSES = {
    "usage": "the command line was rejected (exit 2)",
    "config": "the config file has problems, each named (exit 2)",
    "repository": "the repository refused or failed the operation",
    "damage": "verify, gc or repo repair found damaged or missing data",
    "refused": "the command would destroy data or cannot do what was asked",
    "vcenter": "a vCenter could not be reached or refused a call",
    "job": "a backup job did not back up every VM it selected",
    "interrupted": "Ctrl-C (exit 130)",
    "error": "any other failure: the message says which",
}


def envelope(command: str, res: CommandResult) -> dict[str, Any]:
    error = None
    if res.exit != 0:
        reasons = res.reasons or [f"exit status {res.exit}"]
        error = {"message": reasons[0], "cause": res.cause or "error", "reasons": reasons}
    return {
        "ok": res.exit == 0,
        "command": command,
        "exit": res.exit,
        "result": res.result,
        "error": error,
        "warnings": list(res.warnings),
        "schema": SCHEMA,
    }


def emit(command: str, res: CommandResult, *, as_json: bool, reasons_printed: bool = False) -> int:
    """Print ``res`` (the document, or its text) on stdout and its reasons and warnings
    on stderr; the exit status. ``reasons_printed``: stderr has them already."""
    for w in res.warnings:
        print(f"vmbackup {command}: warning: {w}", file=sys.stderr)
    if as_json:
        json.dump(envelope(command, res), sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif res.text:
        sys.stdout.write(res.text if res.text.endswith("\n") else res.text + "\n")
    sys.stdout.flush()
    if not reasons_printed:
        label = "config error" if res.cause == "config" else "error"
        for r in res.reasons:
            print(f"vmbackup {command}: {label}: {r}", file=sys.stderr)
    return res.exit


def wants_json(argv: list[str]) -> bool:
    """Whether a command line asked for --json (for errors before it is parsed)."""
    return "--json" in argv[: argv.index("--")] if "--" in argv else "--json" in argv
