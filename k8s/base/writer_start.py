"""Start one writer of the StatefulSet with the shard range of its ordinal.

Mounted from a ConfigMap and run as ``python writer_start.py -- vmbackup writer --config F``.
The pod's ordinal comes from its hostname (``vmbackup-writer-3`` -> 3), the number of
writers from ``WRITER_REPLICAS`` (kept equal to the StatefulSet's replicas; tests/k8s checks
it) and the shard count from the config file itself, so that writers and proxies can never
disagree on ``broker.n_shards``. Shards are split into contiguous ranges, the first
``n_shards % replicas`` writers taking one more.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence

_ORDINAL = re.compile(r"-(\d+)$")


class StartError(Exception):
    """The pod cannot work out its shard set; the message says why."""


def ordinal_of(hostname: str) -> int:
    m = _ORDINAL.search(hostname)
    if not m:
        raise StartError(f"hostname {hostname!r} has no StatefulSet ordinal (NAME-N)")
    return int(m.group(1))


def shard_range(ordinal: int, replicas: int, n_shards: int) -> tuple[int, int]:
    """First and last shard (inclusive) owned by writer ``ordinal`` of ``replicas``."""
    if replicas < 1:
        raise StartError(f"WRITER_REPLICAS must be >= 1, got {replicas}")
    if replicas > n_shards:
        raise StartError(
            f"{replicas} writers but only {n_shards} shards (broker.n_shards): "
            "a writer would own nothing; lower the replicas"
        )
    if not 0 <= ordinal < replicas:
        raise StartError(f"ordinal {ordinal} outside 0..{replicas - 1} (WRITER_REPLICAS stale?)")
    base, extra = divmod(n_shards, replicas)
    first = ordinal * base + min(ordinal, extra)
    size = base + (1 if ordinal < extra else 0)
    return first, first + size - 1


def writer_env(env: Mapping[str, str], n_shards: int) -> dict[str, str]:
    """The environment overrides for this writer pod."""
    hostname = env.get("HOSTNAME", "")
    raw = env.get("WRITER_REPLICAS", "")
    try:
        replicas = int(raw)
    except ValueError:
        raise StartError(f"WRITER_REPLICAS must be an integer, got {raw!r}") from None
    ordinal = ordinal_of(hostname)
    first, last = shard_range(ordinal, replicas, n_shards)
    return {"VMBACKUP_WRITER__NAME": hostname, "VMBACKUP_WRITER__SHARDS": f"{first}-{last}"}


def _config_path(command: Sequence[str]) -> str | None:
    for i, arg in enumerate(command):
        if arg == "--config" and i + 1 < len(command):
            return command[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def main(argv: Sequence[str]) -> int:
    command = list(argv[1:] if argv and argv[0] == "--" else argv)
    if not command:
        print("usage: writer_start.py -- vmbackup writer --config FILE", file=sys.stderr)
        return 2
    from common.config import ConfigError
    from common.settings import load_config

    try:
        n_shards = load_config(_config_path(command)).broker.n_shards
        overrides = writer_env(os.environ, n_shards)
    except (ConfigError, StartError) as exc:
        print(f"writer_start: {exc}", file=sys.stderr)
        return 2
    os.environ.update(overrides)
    print(
        f"writer_start: {overrides['VMBACKUP_WRITER__NAME']} owns shards "
        f"{overrides['VMBACKUP_WRITER__SHARDS']} of {n_shards}",
        file=sys.stderr,
        flush=True,
    )
    os.execvp(command[0], command)
    return 0  # not reached: exec replaces the process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
