"""Which account a role connects as, and whom a writer trusts by default."""

from __future__ import annotations

from common.amqp import BrokerParams
from common.broker_accounts import PERMISSIONS, ROLES, account_name
from repository_writer.senders import Senders


def test_broker_user_wins_over_the_url_user() -> None:
    url = "amqp://vmbackup@broker:5672/vmbackup"
    assert BrokerParams(url=url).account == "vmbackup"
    params = BrokerParams(url=url, user="vmbackup-writer", password="pw")
    assert params.account == "vmbackup-writer"
    assert params.pika_params("t").credentials.username == "vmbackup-writer"
    assert BrokerParams(url="amqp://broker/v").account == "guest"
    assert params.with_vhost("other").account == "vmbackup-writer"


def test_writer_trusts_its_peers_by_name() -> None:
    s = Senders.for_account(account_name("site", "writer"))
    assert s.coordinators == {"site-coordinator"} and s.proxies == {"site-proxy"}
    shared = Senders.for_account("vmbackup")  # one account for every role: only itself
    assert shared.coordinators == shared.proxies == {"vmbackup"}
    listed = Senders.for_account("site-writer", ["ops-coord"], ["p1", "p2"])
    assert listed.coordinators == {"ops-coord"} and listed.proxies == {"p1", "p2"}


def test_only_writers_read_shard_queues_and_commits() -> None:
    import re

    for role in ROLES:
        read = re.compile(PERMISSIONS[role].read)
        can = {q: bool(read.match(q)) for q in ("vmbackup.shard.0", "vmbackup.commits")}
        assert can == dict.fromkeys(can, role == "writer"), (role, can)
        # Anchored: no pattern lets a role read a name that only starts like its own.
        assert not read.match("vmbackup.commits.x")
