"""One deadline for a chunk stream's whole hello, enforced by one thread.

A socket time-out applies per read: a peer that sends a byte just before each one runs
out holds its connection (and its thread) for ever. Here each accepted connection gets
one deadline for the TCP connection, the TLS handshake and the hello frame together; a
connection still in its hello when the deadline passes is shut down, which ends the read
its serving thread is blocked in, however the bytes dribble in.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class HelloDeadlines:
    def __init__(self, timeout: float, name: str) -> None:
        self.timeout = timeout
        self._due: dict[socket.socket, float] = {}
        self._expired: set[socket.socket] = set()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(
            target=self._run, name=f"{name}-hello-deadlines", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=10)

    def add(self, sock: socket.socket) -> None:
        """Start the deadline of a connection just accepted."""
        with self._cond:
            self._due[sock] = time.monotonic() + self.timeout
            self._cond.notify()

    def done(self, sock: socket.socket) -> bool:
        """The hello is over (or the connection ended): forget the connection. False
        when its deadline had already passed and shut it down."""
        with self._cond:
            self._due.pop(sock, None)
            if sock in self._expired:
                self._expired.discard(sock)
                return False
            return True

    def expired(self, sock: socket.socket) -> bool:
        """Whether the deadline ended this connection (then a failed read is why)."""
        with self._cond:
            return sock in self._expired

    def _run(self) -> None:
        with self._cond:
            while not self._stopped:
                now = time.monotonic()
                for sock in [s for s, t in self._due.items() if t <= now]:
                    del self._due[sock]
                    self._expired.add(sock)
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)  # the blocked read returns
                wait = min(self._due.values(), default=now + 3600.0) - now
                self._cond.wait(max(wait, 0.01))
