"""`vmbackup repo repair`: re-check the quarantine, list points that still need data.

Exit status 0 when nothing is left to heal, 1 when some point still names a damaged or
missing chunk (or an error occurred), as `verify` and `gc` do.
"""

from __future__ import annotations

import argparse

from common.command_result import CommandResult
from vmbackup.repo_commands import _repo_arg, add_command, json_arg, open_repo

EXAMPLES = """\
  vmbackup repo repair --repo /backup/repo      # after a backup stored the damaged data again
  vmbackup repo repair --repo /backup/repo --json | jq '.result.points_needing_data'
"""


def cmd_repair(args: argparse.Namespace) -> CommandResult:
    from repository.repair import repair

    r = repair(open_repo(args))
    doc = {
        "ok": r.ok,
        "quarantined_checked": r.checked,
        "healed": r.healed,
        "put_back": r.put_back,
        "still_damaged": r.damaged,
        "points_needing_data": [
            {
                "vm_uuid": u.vm_uuid,
                "point_id": u.point_id,
                "disk": u.disk,
                "chunk_index": u.index,
                "offset": u.offset,
                "chunk_id": u.chunk_id.hex(),
                "quarantined": u.chunk_id.hex() in r.damaged,
            }
            for u in r.missing_uses
        ],
        "errors": r.errors,
    }
    lines = [
        f"healed: chunk {h} (a good copy is in place; quarantined copy dropped)" for h in r.healed
    ]
    lines += [
        f"healed: chunk {h} (the quarantined copy checks good again; put back)" for h in r.put_back
    ]
    lines += [f"still damaged: chunk {h} (quarantined; no good copy yet)" for h in r.damaged]
    lines += [f"error: {e}" for e in r.errors]
    for u in r.missing_uses:
        state = "quarantined" if u.chunk_id.hex() in r.damaged else "missing"
        lines.append(f"needs data: {u}: chunk {u.chunk_id.hex()} is {state}")
    points = {u.point_id for u in r.missing_uses}
    lines.append(
        f"{r.checked} quarantined chunk(s) checked: {len(r.healed) + len(r.put_back)} healed, "
        f"{len(r.damaged)} still damaged; {len(points)} point(s) still need data"
    )
    res = CommandResult(0, text="\n".join(lines), result=doc)
    if r.ok:
        return res
    return res.found(1, "damage", [f"{len(points)} point(s) still need data", *r.errors])


def register(rsub: argparse._SubParsersAction) -> None:
    p = add_command(
        rsub,
        "repair",
        "re-check quarantined chunks; list points that still need data",
        EXAMPLES,
        description="Drops each quarantined chunk that a later backup has stored again "
        "(healed), puts back one that checks good again, and lists every point that still "
        "names a quarantined or missing chunk. Exit status 1 while any remain.",
    )
    _repo_arg(p)
    json_arg(p)
    p.set_defaults(func=cmd_repair)
