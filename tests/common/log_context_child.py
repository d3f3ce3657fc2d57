"""A process that logs as a role does (JSON lines on stdout) from its main thread, a
thread of its own, a pool's worker with and without the job's context, and a stdlib
logger on a thread (as pika's are), for tests/common/test_log_context.py."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from common.logging import bound, get_logger, in_log_context, setup_logging


def main() -> None:
    setup_logging("info", "json", role="writer")
    log = get_logger("child")
    stdlib = logging.getLogger("library")
    with bound(job="j-1", vm="vm-1"):
        log.info("main")
        t = threading.Thread(target=lambda: log.info("thread"))
        t.start()
        t.join()
        t = threading.Thread(target=lambda: stdlib.warning("stdlib on a thread"))
        t.start()
        t.join()
        with ThreadPoolExecutor(1) as ex:
            ex.submit(lambda: log.info("pool")).result()
            ex.submit(in_log_context(lambda: log.info("pool in context"))).result()
            # the worker keeps nothing of the context it ran in
            ex.submit(lambda: log.info("pool afterwards")).result()


if __name__ == "__main__":
    main()
