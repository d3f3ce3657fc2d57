"""``vmbackup proxy``: run the proxy worker."""

from __future__ import annotations

import argparse
import sys

from common.config import ConfigError

EXAMPLES = """\
examples:
  vmbackup proxy --config /etc/vmbackup/vmbackup.toml
  vmbackup proxy --config /etc/vmbackup/vmbackup.toml --name proxy-esx01
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "proxy",
        help="run a proxy worker: read snapshot disks, send new chunks to the writers",
        description="Consume the block-range task queues named in [proxy] queues, read the "
        "disks through the configured transport, and send the chunks the writers lack.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=False, help="TOML config file (env VMBACKUP_* overrides)")
    p.add_argument("--name", help="override proxy.name")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from common.amqp import BrokerParams, stop_on_signals
    from common.logging import get_logger
    from common.malloc_tuning import limit_heap_retention
    from common.role_startup import start_role
    from proxy_worker import metrics
    from proxy_worker.service import ProxyService
    from proxy_worker.settings import VCenterAccess, VCenterDirectory

    # every problem at once: the file, what a proxy needs of it (proxy.queues), its secrets
    cfg = start_role("proxy", args.load_config, args.config, role_families=[metrics.REGISTRY])
    settings = cfg.proxy
    # Before the first chunk buffer (common/malloc_tuning.py); a batch message is packed into
    # a buffer up to twice its size.
    limit_heap_retention(mmap_threshold=4 * settings.batch_bytes)
    if args.name:
        settings = dataclasses.replace(settings, name=args.name)
    log = get_logger("proxy")
    vcenters = VCenterDirectory(
        [
            VCenterAccess.from_config(vc, settings.nbd.vddk_thumbprints.get(vc.name, ""))
            for vc in getattr(cfg, "vcenters", [])
        ]
    )
    try:
        service = ProxyService(
            settings,
            BrokerParams.from_settings(cfg.broker),
            n_shards=cfg.broker.n_shards,
            vcenters=vcenters,
        )
    except (ValueError, ConfigError) as exc:
        print(f"vmbackup proxy: {exc}", file=sys.stderr)
        return 2
    stop_on_signals(service)
    log.info("proxy_started", name=settings.name, queues=settings.queues)
    try:
        service.run()
    finally:
        service.close()
    return 0
