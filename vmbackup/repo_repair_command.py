"""`vmbackup repo repair`: re-check the quarantine, list points that still need data.

Exit status 0 when nothing is left to heal, 1 when some point still names a damaged or
missing chunk (or an error occurred), as `verify` and `gc` do.
"""

from __future__ import annotations

import argparse
import json
import sys

from vmbackup.repo_commands import _guard, _repo_arg, open_repo


def cmd_repair(args: argparse.Namespace) -> int:
    from repository.repair import repair

    r = repair(open_repo(args))
    if args.json:
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
        json.dump(doc, sys.stdout, indent=2)
        print()
        return 0 if r.ok else 1
    for h in r.healed:
        print(f"healed: chunk {h} (a good copy is in place; quarantined copy dropped)")
    for h in r.put_back:
        print(f"healed: chunk {h} (the quarantined copy checks good again; put back)")
    for h in r.damaged:
        print(f"still damaged: chunk {h} (quarantined; no good copy yet)")
    for e in r.errors:
        print(f"error: {e}")
    for u in r.missing_uses:
        state = "quarantined" if u.chunk_id.hex() in r.damaged else "missing"
        print(f"needs data: {u}: chunk {u.chunk_id.hex()} is {state}")
    points = {u.point_id for u in r.missing_uses}
    print(
        f"{r.checked} quarantined chunk(s) checked: {len(r.healed) + len(r.put_back)} healed, "
        f"{len(r.damaged)} still damaged; {len(points)} point(s) still need data"
    )
    return 0 if r.ok else 1


def register(rsub: argparse._SubParsersAction) -> None:
    p = rsub.add_parser(
        "repair",
        help="re-check quarantined chunks; list points that still need data",
        description="Drops each quarantined chunk that a later backup has stored again "
        "(healed), puts back one that checks good again, and lists every point that still "
        "names a quarantined or missing chunk. Exit status 1 while any remain.",
    )
    _repo_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_guard(cmd_repair))
