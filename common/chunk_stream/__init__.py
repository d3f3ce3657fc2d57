"""The chunk-stream protocol shared by its two ends.

A chunk stream is a TCP connection (TLS pinned through the broker when that is
amqps://) from a proxy to a writer, beside the broker: length-prefixed msgpack frames
(frames.py), opened by a StreamHello carrying the token the writer handed out in its
HaveReply, then ChunkBatch/HaveQuery requests and their replies. tls_socket.py holds the
TLS wrapper and the certificate pinning. The ends: the writer's server in
repository_writer/chunk_stream_server.py, the proxy's client in
proxy_worker/chunk_stream_client.py.
"""
