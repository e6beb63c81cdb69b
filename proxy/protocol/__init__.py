"""Pure wire formats: the PROXY protocol, the TLS ClientHello (SNI, ALPN), which protocol a client's
first bytes are, the TLS session over memory buffers, the hex dump, pcapng captures of TCP
conversations, the HTTP/1.1 the admin speaks, and DNS messages (`dns`: queries and what their
answers hold, over dnspython's wire format).

Bytes in, values out (and back): no sockets, no clock, no configuration. It may import
`proxy.errors`, `proxy.config.units` for the address values a PROXY header carries (the
placeholder host of a UNIX socket) and a nameserver has, and the schema's DNS port; nothing
else of pairproxy.
"""
