"""The admin surfaces: what an operator asks a running proxy, and how it is told.

`command_socket` serves the admin socket (HAProxy-style command lines on a UNIX socket) and is
the client side of `pairproxy ctl`; `web` is the HTTP admin (/metrics, /ready, /status, /conns);
`workers` is the supervisor's side of `run --workers N`, asking every worker over its admin pair
and merging the answers. What they show is a snapshot: `stats` counts (per-listener counters, the
process's figures, the rows of `Server.snapshot()`), `snapshots` merges several workers' into one,
`prometheus` and `status_page` render one (pure: a snapshot in, text out).

A layer between `proxy.serve` (which builds these surfaces for its Server or its supervisor) and
`proxy.relay`: the counters read a pair's sides. It may import relay, loop, policy, protocol,
config, log and errors; it never imports serve, and reaches what it controls through the
protocols it declares (`Controlled`).
"""
