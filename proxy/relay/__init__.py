"""Two sockets joined: the pair, its two sides (plain or TLS), the preamble a client sends before
it can be routed, splicing, send buffers, and the dump tap.

It runs on `proxy.loop` and uses `proxy.policy` (the pool a pair connects through) and
`proxy.protocol` (the TLS session); it knows nothing of YAML, of listeners or of reloads.
"""
