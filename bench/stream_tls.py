"""Chunk stream frames through TLS (common/chunk_stream/tls_socket.py) against plain TCP,
in one run.

    .venv/bin/python -m bench.stream_tls [--frames 256] [--frame-mib 4]

One connected socket pair; a thread sends chunk batches as a proxy does (encode_parts,
send_frame), another reads and decodes them as a writer does (FrameReader). Reports wall
rate and each side's CPU per GB of payload (thread CPU clocks), for TLS and plain TCP.
"""

from __future__ import annotations

import argparse
import os
import socket
import threading
import time

from common.chunk_stream.frames import FrameReader, StreamSocket, send_frame
from common.chunk_stream.tls_socket import TlsSocket, client_context
from common.messages import ChunkBatch, encode_parts
from repository_writer.stream_identity import make_identity


def _thread_cpu() -> float:
    return time.clock_gettime(time.CLOCK_THREAD_CPUTIME_ID)


def run(
    sender: StreamSocket, receiver: StreamSocket, batch: ChunkBatch, n: int
) -> dict[str, float]:
    out: dict[str, float] = {}

    def receive() -> None:
        c0 = _thread_cpu()
        frames = FrameReader(receiver)
        for _ in range(n):
            assert isinstance(frames.read(ChunkBatch), ChunkBatch)
        out["recv_cpu"] = _thread_cpu() - c0

    t = threading.Thread(target=receive)
    t0 = time.perf_counter()
    t.start()
    c0 = _thread_cpu()
    for _ in range(n):
        send_frame(sender, encode_parts(batch))
    out["send_cpu"] = _thread_cpu() - c0
    t.join()
    out["seconds"] = time.perf_counter() - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=256)
    ap.add_argument("--frame-mib", type=int, default=4)
    args = ap.parse_args()
    payload = os.urandom(args.frame_mib << 20)
    batch = ChunkBatch("b", "t", "", [(bytes(32), len(payload), False, payload)])
    gb = args.frames * len(payload) / 1e9

    identity = make_identity("bench")
    a, b = socket.socketpair()
    server: list[TlsSocket] = []
    t = threading.Thread(target=lambda: server.append(TlsSocket.server(b, identity.context, 10)))
    t.start()
    client = TlsSocket.client(a, client_context(), identity.fingerprint, 10)
    t.join()
    rows = [("tls", run(client, server[0], batch, args.frames))]
    client.close()
    server[0].close()
    a, b = socket.socketpair()
    rows.append(("plain", run(a, b, batch, args.frames)))
    a.close()
    b.close()

    print("| stream | GB/s | send CPU s/GB | receive CPU s/GB |")
    print("|---|---|---|---|")
    for name, r in rows:
        print(
            f"| {name} | {gb / r['seconds']:.2f} | {r['send_cpu'] / gb:.2f} | "
            f"{r['recv_cpu'] / gb:.2f} |"
        )


if __name__ == "__main__":
    main()
