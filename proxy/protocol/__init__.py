"""Pure wire formats: the PROXY protocol, the TLS ClientHello (SNI), the TLS session over memory
buffers, and the hex dump.

Bytes in, values out (and back): no sockets, no clock, no configuration. It may import
`proxy.errors` and nothing else of pairproxy.
"""
