"""The whole config file: the shared sections and every role's, one dataclass.

One file configures every role, so the schema is the union of all sections and an
unknown key anywhere is an error. This is the one place that knows every role's section
(common knows none): roles get the loader passed in (common/role_startup.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from common import config
from common.settings import BrokerSettings, LogSettings, MetricsSettings
from coordinator.settings import CoordinatorSettings, PolicySettings, VCenterSettings
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


def load_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Load and validate the whole config (raises common.config.ConfigError)."""
    return config.load(Config, path, env=env)
