"""The event loop, asyncore-shaped: a reactor over one poller (epoll), dispatchers, and the dispatchers
every server needs (a listener, a connector, a name resolver).

It knows sockets, timers and signals, nothing of pairs, routes or YAML. It may import
`proxy.config` (addresses), `proxy.log` and `proxy.errors`, nothing above it.
"""
