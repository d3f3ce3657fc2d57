"""A TCP relay for tests that cuts connections mid-stream (a dropped HTTP connection) and
records what clients sent (``received``, the first MiB: what crossed the wire in clear)."""

from __future__ import annotations

import contextlib
import socket
import threading

_RECORDED = 1 << 20


class CuttingRelay:
    """Forwards 127.0.0.1:<port> to ``target``; the first ``cuts`` connections that carry
    more than ``cut_after`` bytes back to the client (``upstream``: from the client, an
    upload) are closed at that point."""

    def __init__(
        self, target: tuple[str, int], cut_after: int, cuts: int, *, upstream: bool = False
    ) -> None:
        self.target = target
        self.upstream = upstream
        self.cut_after = cut_after
        self.cuts_left = cuts
        self.cuts_done = 0
        self.connections = 0
        self.received = bytearray()
        self._lock = threading.Lock()
        self._srv = socket.create_server(("127.0.0.1", 0))
        self.port = self._srv.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._srv.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, downstream: bool) -> None:
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if not downstream:
                    with self._lock:
                        self.received += data[: max(0, _RECORDED - len(self.received))]
                if downstream != self.upstream and sent + len(data) > self.cut_after:
                    with self._lock:
                        cut = self.cuts_left > 0
                        if cut:
                            self.cuts_left -= 1
                            self.cuts_done += 1
                    if cut:
                        dst.sendall(data[: self.cut_after - sent])
                        break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def close(self) -> None:
        self._stop = True
        self._srv.close()
