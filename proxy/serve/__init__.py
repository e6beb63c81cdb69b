"""Serving: the server (bind, reload, drain, signals) and what each of its loads builds, admission
of each client, the workers and their supervisor, health checks, the echo server, and the SSL
contexts the configuration asks for.

The top layer below the command line: it may import everything beneath it (relay, loop,
policy, protocol, config, log, errors).
"""
