"""Pure wire formats: the PROXY protocol, the TLS ClientHello (SNI, ALPN), which protocol a client's
first bytes are, the TLS session over memory buffers, the hex dump, pcapng captures of TCP
conversations, and the HTTP/1.1 the admin speaks.

Bytes in, values out (and back): no sockets, no clock, no configuration. It may import
`proxy.errors`, and `proxy.config.units` for the address values a PROXY header carries (the
placeholder host of a UNIX socket); nothing else of pairproxy.
"""
