"""Serving: the server (`server`: start, reload, drain, signals) and what each of its loads builds
(`build`), admission of each client (`frontend`), the SSL contexts the configuration asks for
(`contexts`), the workers and their supervisor (`workers`), systemd's notify protocol and socket
activation (`systemd`), active health checks (`health`), pools that follow DNS (`discovery`,
and `route_lookup`, the lookup `pairproxy route` makes), faults changed at run time
(`runtime_faults`), the echo server (`echo`), the pid file (`pidfile`) and the flags of socket
and process options (`flags`).

The top layer below the command line: it may import everything beneath it (admin, relay, loop,
policy, protocol, config, log, errors). The admin surfaces it serves live in `proxy.admin`.
"""
