"""A path inside a restored filesystem, as the operator types it, made safe to open under
the mount point: no ``..`` (it could climb out of the mount), no symbolic link on the way
(its target is the guest's path, not ours: followed here it could point anywhere on
this machine). The last component may be a link: it is listed and copied as a link.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

from file_restore.partitions import FileRestoreError


def inner_parts(text: str) -> tuple[str, ...]:
    """ "/etc//ssh/./sshd_config" -> ("etc", "ssh", "sshd_config"); "/" -> (); ``..``
    refused."""
    if "\0" in text:
        raise FileRestoreError(f"path {text!r} holds a NUL byte")
    parts = tuple(p for p in PurePosixPath("/", text).parts[1:] if p not in ("", "."))
    if ".." in parts:
        raise FileRestoreError(
            f"path {text!r} holds '..': give the path from the filesystem's root, without '..'"
        )
    return parts


def resolve_inside(root: Path, text: str) -> Path:
    """The path ``text`` names under ``root`` (a mount point), not following any link;
    FileRestoreError naming what is missing or in the way."""
    here = root
    parts = inner_parts(text)
    for i, name in enumerate(parts):
        here = here / name
        shown = "/" + "/".join(parts[: i + 1])
        try:
            st = os.lstat(here)
        except FileNotFoundError:
            raise FileRestoreError(f"no such file or directory: {shown}") from None
        except OSError as exc:
            raise FileRestoreError(f"cannot read {shown}: {exc.strerror}") from None
        last = i == len(parts) - 1
        if not last and stat.S_ISLNK(st.st_mode):
            raise FileRestoreError(
                f"{shown} is a symbolic link (to {os.readlink(here)!r}): give the path it"
                " points to, from the filesystem's root"
            )
        if not last and not stat.S_ISDIR(st.st_mode):
            raise FileRestoreError(f"{shown} is not a directory")
    return here
