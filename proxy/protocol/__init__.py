"""Pure wire formats: the PROXY protocol, the TLS ClientHello (SNI), the TLS session over memory
buffers, the hex dump, and pcapng captures of TCP conversations.

Bytes in, values out (and back): no sockets, no clock, no configuration. It may import
`proxy.errors` and nothing else of pairproxy.
"""
