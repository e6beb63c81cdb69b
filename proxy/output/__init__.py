"""Outputs: what the proxy writes without ever blocking its loop.

`queue.py` is the bounded, non-blocking queue every output writes through (the log, the dump,
captures) and the files of traffic and secrets opened 0600; its names are re-exported here,
for the log, the loader and the loop below the protocols. `tap.py` (the hex dump writer) and
`pcap_sink.py` (capture files) are outputs built on it that need the wire formats of
`proxy.protocol` and the schema of `proxy.config`, so they sit above those layers (see
pyproject.toml's import contract); nothing here imports them.
"""

from proxy.output.queue import (
    DUMP_QUEUE_LIMIT,
    FLUSH_TIMEOUT,
    LOG_QUEUE_LIMIT,
    PIPE_BUF,
    PRIVATE_MODE,
    Drainer,
    Output,
    StreamOutput,
    file_identity,
    open_private,
    output_for,
    pieces,
)

__all__ = [
    "DUMP_QUEUE_LIMIT",
    "FLUSH_TIMEOUT",
    "LOG_QUEUE_LIMIT",
    "PIPE_BUF",
    "PRIVATE_MODE",
    "Drainer",
    "Output",
    "StreamOutput",
    "file_identity",
    "open_private",
    "output_for",
    "pieces",
]
