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

* **Validation.** At start a wrong type, an unknown key, a missing required value, a
  value out of range or a reference to nothing stops the process with one line per
  problem, each naming the file and the key path (exit status 2; see below).
* **Environment overrides.** `VMBACKUP_<SECTION>__<KEY>=value` overrides a key
  (double underscore between levels; list items by index:
  `VMBACKUP_VCENTERS__0__HOST=vc1.example.com`). Values use TOML syntax where they
  are numbers, booleans or lists (`VMBACKUP_PROXY__QUEUES='["host.esx1"]'`).
* **Secrets** (type `secret`) are never only inline: `password = {file = "/run/secrets/vc"}`
  reads a file (a Kubernetes Secret mounted as a file; one trailing newline is
  stripped), `password = {env = "VC_PASSWORD"}` reads a variable; an inline string is
  accepted for labs.

## How the config is checked

One function, `check_config` in `vmbackup/config_schema.py`, finds every problem of a
file and names each by its key path (`policies[1].window.start: '25:00': expected
HH:MM`). `vmbackup config check` prints what it finds, and every role runs it at start
(`common/role_startup.py`: the loader each role is given), so a file `config check
--role R` passes is one role R starts on, and a file it refuses is refused at start
with the same lines, before the role logs "starting".

* **What is checked.** Each key's type; unknown keys; required keys; each table's own
  rules (ranges, formats, cron expressions, keys that exclude each other), every rule
  of a table, not only the first that fails; then what no table sees alone: names used
  once (`[[vcenters]]`, `[[policies]]`), each policy's `vcenters` naming a configured
  vCenter, `proxy.nbd.vddk_thumbprints` naming one, `writer.shards` within
  `broker.n_shards`. A table that is wrong stands in for its default while the rest is
  checked, and a check that would be about that default is left out: one mistake is
  reported once, not again by every check that reads it.
* **Roles and secrets.** `config check -c FILE` checks the file for every role and
  reads no secret: it runs anywhere (CI, a laptop), and secrets are on the machines
  the roles run on (`/run/secrets/...`). `config check -c FILE --role
  writer|proxy|coordinator` is the check that role makes at start: also the keys it
  cannot run without (the writer `repository.path`; the proxy `proxy.queues`; the
  coordinator `repository.path` and `[[vcenters]]`) and the secrets it reads, read
  here (those in the sections it uses: the writer `broker`, `repository`, `writer`;
  the proxy `broker`, `proxy`, `vcenters`; the coordinator `broker`, `repository`,
  `coordinator`, `vcenters`, `policies`). A role reads only its own
  secrets, so one file can serve every role while each machine holds only its role's
  secrets. `--no-secrets` checks a role's keys without reading its secrets (CI again).
  Commands that are no role (`restore-vm`, `writer_start.py`) read every secret.
* **Output.** One line per problem on stderr, in the order of the keys in this table,
  `vmbackup config check: config error: FILE: KEY: WHAT` (a role at start: `vmbackup ROLE:
  config error: ...`; a key of "" is the file itself: not found, not TOML); exit status 0
  or 2. `--json` prints the document every command prints (docs/cli-json.md) on stdout
  as well, its `result` `{"errors": [{"key": KEY, "error": WHAT}]}`, with the same exit
  status; so does any command given `--json` and a config with problems.
* **Why the dataclass schema, not pydantic.** The schema was already dataclasses, and
  this table, `config keys`, the environment overrides and the secrets are made from
  them; what it lacked was going on past the first problem, and the checks between
  sections and per role. Both fit in `common/config.py` (the loader records each
  problem and goes on) and `common/config_problems.py` (`Checks`: a table's
  `__post_init__` reports each problem it finds, where it raised at the first); what
  the sections declare stays as it is. Pydantic v2 would collect the
  problems too, but it is a new compiled dependency (pydantic-core) in the image of
  every role; its strict mode would be needed to keep TOML's types (`"8443"` is not a
  port) while the environment overrides, which are strings, are still parsed by us;
  its messages and locations would be translated into these key paths; and every
  section's validation would be rewritten as its validators, in classes other changes
  edit at the same time. The secrets, the overrides, the checks between sections and
  per role, and this table would stay ours either way.

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
