"""The event loop, asyncore-shaped: a reactor over one poller (epoll, called directly), its
dispatchers, and the dispatchers every server needs.

- `reactor`: the loop, its map of dispatchers, timers, `call_soon`, the wake-up socketpair
- `poller`: what the reactor waits on (epoll, or the selectors module where there is none)
- `dispatcher`: the dispatcher base, its checked states, and `PeerDispatcher`
- `listener`: bind, accept in batches, pause when out of descriptors; UNIX socket files; the
  sockets a supervisor keeps (`SocketFiles`) and hands a worker (`HandedSockets`)
- `connector`: a non-blocking connect to one server after another
- `sockopts`: the socket options a listener or an upstream asks for, set once per load
- `resolver`: name lookups in worker threads
- `dns`: a DNS client on the reactor (UDP, TCP after truncation, one nameserver after another)
- `drain`: an output's queue drained when its descriptor is writable

It knows sockets, timers and signals, nothing of pairs, routes or YAML. It may import
`proxy.config` (addresses), `proxy.protocol` (DNS messages), `proxy.output`, `proxy.log` and
`proxy.errors`, nothing above it.
"""
