"""How `vmbackup export` stops its nbdkit even while clients are connected.

nbdkit 1.32 quits on SIGTERM only once each connection sends its next request: an idle
client (a mounted filesystem, a paused copy) would keep it running until SIGKILL, which
skips the plugin's cleanup. So the parent also holds the write end of a control pipe;
when it closes it (a stop, or the parent's death), a thread of the plugin asks nbdkit to
quit and shuts down every connected socket of the process (not the listening ones),
which ends each connection at once and lets nbdkit exit cleanly.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable


def shut_connections() -> int:
    """shutdown() every connected socket of this process; returns how many."""
    done = 0
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue  # not a socket (or closed meanwhile)
        with sock, contextlib.suppress(OSError):
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                continue  # a listening socket: nbdkit closes it itself
            sock.shutdown(socket.SHUT_RDWR)
            done += 1
    return done


def stop_on_eof(fd: int, quit_server: Callable[[], None]) -> threading.Thread:
    """A daemon thread that waits for EOF on ``fd``, then quits the server."""

    def run() -> None:
        with contextlib.suppress(OSError):
            while os.read(fd, 4096):
                pass
        quit_server()
        shut_connections()

    t = threading.Thread(target=run, name="export-control", daemon=True)
    t.start()
    return t
