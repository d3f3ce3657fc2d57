"""Start-up shared by every long-running role: config, logging, metrics endpoint.

The config schema is the application's (vmbackup/config_schema.py: it knows every role,
common knows none), so the loader comes in as an argument: the `vmbackup` parser puts it
on every command's arguments as ``args.load_config``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from common.config import ConfigError
from common.config_problems import Problem
from common.logging import get_logger, setup_logging
from common.metrics import BUILD_INFO, serve_metrics
from common.version import package_version


class ConfigLoader(Protocol):
    """Loads and validates the whole config file, with what ``role`` needs of it when
    given (raises common.config.ConfigError naming every problem)."""

    def __call__(self, path: str | Path | None, *, role: str | None = None) -> Any: ...


class ConfigRejected(SystemExit):
    """Exit status 2 for a config's problems, printed already; they stay on it for a
    caller that reports them another way too (the vmbackup command's --json)."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        super().__init__(2)
        self.source, self.problems = source, problems


def load_or_exit(
    load_config: ConfigLoader, config_path: str | Path | None, role: str | None = None
) -> Any:
    """The config, checked for ``role`` (None: the file alone); on any problem print every
    one, naming the file, and exit 2."""
    try:
        return load_config(config_path, role=role)
    except ConfigError as exc:
        source = str(config_path) if config_path else "(no config file: give --config FILE)"
        for p in exc.problems:
            print(f"vmbackup {role or 'config'}: config error: {source}: {p}", file=sys.stderr)
        raise ConfigRejected(source, exc.problems) from None


def start_role(
    role: str,
    load_config: ConfigLoader,
    config_path: str | Path | None,
    metrics_port: int | None = None,
    *,
    role_families: Sequence[CollectorRegistry],
    one_shot: bool = False,
) -> Any:
    """Load config, set up logging and serve /metrics; returns the config.

    The config is checked as `vmbackup config check --role ROLE` checks it (the loader
    does both: the file, what the role needs of it, the secrets it reads). Every problem
    is printed and the process exits 2 before it logs "starting"
    or opens its metrics port, so a role never looks started on a config it rejects.
    ``metrics_port`` (e.g. from a --metrics-port flag) overrides the config; the
    port in use is printed so that an operator (or the demo) can find it. /metrics shows
    the shared families and ``role_families``, the registries of the role's own (its
    metrics.py): a process exports no other role's. A ``one_shot`` command logs to
    stderr: its stdout is its result.
    """
    cfg = load_or_exit(load_config, config_path, role)
    setup_logging(cfg.log.level, cfg.log.format, role=role, stream=sys.stderr if one_shot else None)
    port = cfg.metrics.port if metrics_port is None else metrics_port
    if port:
        try:
            serve_metrics(port, cfg.metrics.address, role_families)
        except OSError as exc:
            print(
                f"vmbackup: cannot serve /metrics on port {port}: {exc.strerror}", file=sys.stderr
            )
            raise SystemExit(2) from None
    BUILD_INFO.labels(version=package_version(), role=role).set(1)
    get_logger("vmbackup").info("starting", role=role, metrics_port=port or None)
    return cfg
