"""Per-role RabbitMQ accounts for a lab stack (``rabbitmqctl``), created idempotently.

Each stack gets ``<vhost>-coordinator``, ``<vhost>-proxy`` and ``<vhost>-writer`` with
the permissions of common/broker_accounts.py on its vhost only, and a password file per
role; users are global in RabbitMQ, so :func:`delete_accounts` removes them on stop.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common.broker_accounts import PERMISSIONS, ROLES, account_name

Ctl = Callable[..., str]


@dataclass(frozen=True)
class Account:
    role: str
    user: str
    password_file: Path


def create_accounts(ctl: Ctl, vhost: str, workdir: Path) -> dict[str, Account]:
    """One account per role on ``vhost``; an existing user of that name gets a new
    password (a stack restarted in the same place)."""
    try:
        return _create(ctl, vhost, workdir)
    except Exception:
        delete_accounts(ctl, vhost)  # none left behind by a stack that did not start
        raise


def _create(ctl: Ctl, vhost: str, workdir: Path) -> dict[str, Account]:
    out: dict[str, Account] = {}
    for role in ROLES:
        user = account_name(vhost, role)
        # Hex: rabbitmqctl would take a password that starts with "-" for an option.
        password = secrets.token_hex(24)
        try:
            ctl("add_user", user, password)
        except RuntimeError as exc:
            if "already exists" not in str(exc):
                raise
            ctl("change_password", user, password)
        p = PERMISSIONS[role]
        ctl("set_permissions", "-p", vhost, user, p.configure, p.write, p.read)
        pw_file = workdir / f"broker-{role}.password"
        pw_file.write_text(password)
        pw_file.chmod(0o600)
        out[role] = Account(role, user, pw_file)
    return out


def delete_accounts(ctl: Ctl, vhost: str) -> None:
    for role in ROLES:
        with contextlib.suppress(Exception):  # best effort: a leftover user has no vhost
            ctl("delete_user", account_name(vhost, role))
