"""Start one writer of the StatefulSet with the shard range of its ordinal.

Mounted from a ConfigMap and run as ``python writer_start.py -- vmbackup writer --config F``.
The shards (``broker.n_shards``, read from the config file itself so that writers and
proxies can never disagree) are split into ``WRITER_SHARD_GROUPS`` contiguous ranges, the
first ``n_shards % groups`` taking one more. The pod's ordinal comes from its hostname
(``vmbackup-writer-5`` -> 5); writer *i* consumes the range of group ``i % groups``.

Shard ownership is therefore stable while KEDA scales the StatefulSet: ``groups`` equals the
ScaledObject's ``minReplicaCount`` (tests/k8s checks it), so ordinals 0..groups-1 always run
and cover every shard, and each extra writer (ordinal >= groups) joins a group's queues as
one more competing consumer. Writers share the repository volume; a chunk stored by two
writers of a group at once is written twice under the same name, harmlessly.
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


def shard_range(group: int, groups: int, n_shards: int) -> tuple[int, int]:
    """First and last shard (inclusive) of shard group ``group`` of ``groups``."""
    if groups < 1:
        raise StartError(f"WRITER_SHARD_GROUPS must be >= 1, got {groups}")
    if groups > n_shards:
        raise StartError(
            f"{groups} shard groups but only {n_shards} shards (broker.n_shards): "
            "a group would own nothing; lower WRITER_SHARD_GROUPS"
        )
    if not 0 <= group < groups:
        raise StartError(f"shard group {group} outside 0..{groups - 1}")
    base, extra = divmod(n_shards, groups)
    first = group * base + min(group, extra)
    size = base + (1 if group < extra else 0)
    return first, first + size - 1


def writer_env(env: Mapping[str, str], n_shards: int) -> dict[str, str]:
    """The environment overrides for this writer pod."""
    hostname = env.get("HOSTNAME", "")
    raw = env.get("WRITER_SHARD_GROUPS", "")
    try:
        groups = int(raw)
    except ValueError:
        raise StartError(f"WRITER_SHARD_GROUPS must be an integer, got {raw!r}") from None
    ordinal = ordinal_of(hostname)
    if groups < 1:
        raise StartError(f"WRITER_SHARD_GROUPS must be >= 1, got {groups}")
    first, last = shard_range(ordinal % groups, groups, n_shards)
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
    from vmbackup.config_schema import load_config

    try:
        n_shards = load_config(_config_path(command)).broker.n_shards
        overrides = writer_env(os.environ, n_shards)
    except (ConfigError, StartError) as exc:
        for line in str(exc).splitlines():  # a ConfigError: one line per problem
            print(f"writer_start: {line}", file=sys.stderr)
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
