"""Regenerate docs/configuration.md from the config schema (run: make docs)."""

from __future__ import annotations

import sys
from pathlib import Path

from common.config import describe
from vmbackup.config_schema import Config

HEADER = """\
# Configuration

One TOML file configures every role (`--config FILE` on each command); an annotated
example is `examples/vmbackup.toml`. `vmbackup config check --config FILE` validates a
file; `vmbackup config keys` prints this table.

* **Validation.** At start a wrong type, an unknown key or a missing required value
  stops the process with one line naming the key and the file (exit status 2).
* **Environment overrides.** `VMBACKUP_<SECTION>__<KEY>=value` overrides a key
  (double underscore between levels; list items by index:
  `VMBACKUP_VCENTERS__0__HOST=vc1.example.com`). Values use TOML syntax where they
  are numbers, booleans or lists (`VMBACKUP_PROXY__QUEUES='["host.esx1"]'`).
* **Secrets** (type `secret`) are never only inline: `password = {file = "/run/secrets/vc"}`
  reads a file (a Kubernetes Secret mounted as a file; one trailing newline is
  stripped), `password = {env = "VC_PASSWORD"}` reads a variable; an inline string is
  accepted for labs.

This file is generated from the schema by `scripts/gen_config_docs.py`; a test fails
when it is out of date.

| key | type | default | meaning |
|---|---|---|---|
"""


def render() -> str:
    rows = [
        f"| `{key}` | {tp} | `{default}` | {doc.replace('|', '/')} |"
        for key, tp, default, doc in describe(Config)
    ]
    return HEADER + "\n".join(rows) + "\n"


def main() -> int:
    out = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
    out.write_text(render(), encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
