"""The whole config file: the shared sections and every role's, one dataclass, and the
one check of it that `vmbackup config check` and every role at start share.

One file configures every role, so the schema is the union of all sections and an
unknown key anywhere is an error. This is the one place that knows every role's section
(common knows none): roles get the loader passed in (common/role_startup.py), and
:data:`ROLES` says what each one needs of the file.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from common import config
from common.config import ENV_PREFIX, Checked
from common.config_problems import FieldProblem
from common.settings import BrokerSettings, LogSettings, MetricsSettings
from common.sharding import parse_shard_set
from coordinator.settings import (
    CoordinatorSettings,
    PolicySettings,
    VCenterSettings,
    reference_problems,
)
from proxy_worker.settings import ProxySettings
from repository_writer.settings import RepositorySettings, WriterSettings


@dataclass(frozen=True)
class Config:
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    log: LogSettings = field(default_factory=LogSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    repository: RepositorySettings = field(default_factory=RepositorySettings)
    writer: WriterSettings = field(default_factory=WriterSettings)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    coordinator: CoordinatorSettings = field(default_factory=CoordinatorSettings)
    vcenters: list[VCenterSettings] = field(default_factory=list)
    policies: list[PolicySettings] = field(default_factory=list)


@dataclass(frozen=True)
class RoleNeeds:
    """What a role needs of the file beyond its being valid: keys that must be set (with
    a hint for the operator), and the sections whose secrets it reads where it runs (the
    other roles' secrets need not be on its machine, so it does not read them)."""

    required: Mapping[str, str]
    secrets_in: tuple[str, ...]


# Each role reads the secrets of its own section too, so that a secret added there later
# is read by the role that uses it without a change here.
ROLES: dict[str, RoleNeeds] = {
    "writer": RoleNeeds({"repository.path": ""}, ("broker", "repository", "writer")),
    "proxy": RoleNeeds(
        {"proxy.queues": 'the task queues this proxy takes, e.g. ["host.esx-01", "datastore.ds1"]'},
        ("broker", "proxy", "vcenters"),
    ),
    "coordinator": RoleNeeds(
        {"repository.path": "", "vcenters": ""},
        ("broker", "repository", "coordinator", "vcenters", "policies"),
    ),
}


def whole_file_problems(cfg: Config) -> Iterator[FieldProblem]:
    """What no section can check alone: references between sections."""
    yield from _writer_shards(cfg)
    names = {vc.name for vc in cfg.vcenters}
    for name in cfg.proxy.nbd.vddk_thumbprints:
        if name not in names:
            yield FieldProblem(
                f"proxy.nbd.vddk_thumbprints.{name}",
                f"no [[vcenters]] named {name!r}",
                depends=(f"proxy.nbd.vddk_thumbprints.{name}", "vcenters"),
            )
    yield from reference_problems(list(cfg.vcenters), list(cfg.policies))


def _writer_shards(cfg: Config) -> Iterator[FieldProblem]:
    try:
        parse_shard_set(cfg.writer.shards, cfg.broker.n_shards)
    except ValueError as exc:
        yield FieldProblem(
            "writer.shards",
            f"{exc} (broker.n_shards = {cfg.broker.n_shards})",
            depends=("writer.shards", "broker.n_shards"),
        )


def s3_config_problems(cfg: Config) -> Iterator[FieldProblem]:
    """An s3:// repository's S3 config file and its credentials, read where the role runs
    (as the roles read them at start: the same errors, before anything starts)."""
    rs = cfg.repository
    if not rs.s3_config:
        return
    from repository.s3_config import S3ConfigError, load_s3_config

    try:
        load_s3_config(Path(rs.s3_config), rs.path).credentials()
    except S3ConfigError as exc:
        yield FieldProblem("repository.s3_config", str(exc), depends=("repository.path",))


def role_problems(cfg: Config, role: str) -> Iterator[FieldProblem]:
    """The keys ``role`` cannot start without, each one unset named with its variable."""
    for key, hint in ROLES[role].required.items():
        value: object = cfg
        for part in key.split("."):
            value = getattr(value, part)
        env = ENV_PREFIX + key.upper().replace(".", "__")
        if key in ("vcenters", "policies") and not value:  # the lists of tables
            yield FieldProblem(key, f"none configured (a [[{key}]] table each)")
        elif value == [] or value == "":
            what = "empty" if value == [] else "not set"
            hint = f": {hint}" if hint else ""
            yield FieldProblem(key, f"{what}{hint} (in the config file, or ${env})")


def check_config(
    path: str | Path | None,
    env: Mapping[str, str] | None = None,
    *,
    role: str | None = None,
    secrets: bool = True,
) -> Checked[Config]:
    """Every problem of a config file, each as "key.path: what is wrong".

    Without ``role``: the file itself, for every role (types, ranges, unknown and
    missing keys, references between sections). With ``role``: also the keys that role
    needs, and (``secrets``) the secrets it reads, read here: whether it can start on
    this machine. ``secrets`` without a role reads every secret of the file.
    """
    if role is not None and role not in ROLES:
        raise ValueError(f"unknown role {role!r}: {', '.join(ROLES)}")

    def read_secret(key: str) -> bool:
        if not secrets:
            return False
        return role is None or key.split(".")[0].split("[")[0] in ROLES[role].secrets_in

    def extra(cfg: Config) -> Iterator[FieldProblem]:
        yield from whole_file_problems(cfg)
        if role is not None:
            yield from role_problems(cfg, role)
        if read_secret("repository.s3_config"):
            yield from s3_config_problems(cfg)

    return config.check(Config, path, env, read_secret=read_secret, extra=extra)


def load_config(
    path: str | Path | None, env: Mapping[str, str] | None = None, *, role: str | None = None
) -> Config:
    """:func:`check_config` (with the secrets it reads), raising common.config.ConfigError
    with every problem when there is any."""
    found = check_config(path, env, role=role)
    if found.config is None:
        raise config.ConfigError(str(path) if path else "(no config file)", found.problems)
    return found.config
