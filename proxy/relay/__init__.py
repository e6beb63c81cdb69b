"""Two sockets joined. `pair` (the pair: its phase, its end), `access` (its access line),
`runtime` (what all pairs share), `side` and `tls_side` (its two sockets, plain or TLS),
`seams` (what a side reports to and where its bytes go), `states` (the relay's state machines
and their constants), `dialer` (reaching the upstream: candidates, upstream TLS, the
PROXY header), `preamble` (what a client sends before it can be routed), `splice` and `buffer`
(how bytes wait: kernel pipes, send buffers, the process's budget), `inspection` (what looks at
a connection or bends it, None for a plain one) with `dumping` (who is dumped and captured),
`capture` (the pcap tap on the sockets) and `faults` (toxics on purpose).

It runs on `proxy.loop`, writes through `proxy.output` (the hex dump, capture files), and uses
`proxy.policy` (the pool a pair connects through, the toxics it draws) and `proxy.protocol` (the
TLS session, pcapng); it knows nothing of YAML, of listeners or of reloads.
"""
