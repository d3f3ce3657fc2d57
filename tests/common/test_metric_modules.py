"""Where a metric family is declared decides which processes export it (common/metrics.py:
every one; a role's metrics.py: that role's only), so each module holds only its own:
common the shared families, each role the families named after it."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry

from coordinator import metrics as coordinator
from export import metrics as export
from proxy_worker import metrics as proxy
from repository import metrics as repository
from repository_writer import metrics as writer


def families(registry: CollectorRegistry) -> set[str]:
    return {m.name for m in registry.collect() if m.name.startswith("vmbackup_")}


def test_common_declares_only_what_every_process_shares() -> None:
    shared = families(REGISTRY)
    assert "vmbackup_build_info" in shared
    odd = {n for n in shared - {"vmbackup_build_info"} if not n.startswith("vmbackup_amqp_")}
    assert not odd, f"role families in common/metrics.py (move them to the role's): {odd}"


def test_each_role_declares_the_families_named_after_it() -> None:
    for registry, prefix in (
        (coordinator.REGISTRY, "vmbackup_coordinator_"),
        (proxy.REGISTRY, "vmbackup_proxy_"),
        (writer.REGISTRY, "vmbackup_writer_"),
        (repository.REGISTRY, "vmbackup_repo_"),
        (export.REGISTRY, "vmbackup_export_"),
    ):
        names = families(registry)
        assert names, prefix
        assert all(n.startswith(prefix) for n in names), (prefix, names)
