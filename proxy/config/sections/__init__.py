"""The sections of the route table file, one module per part, each with its `Section` tables:
listeners.py (listeners, their TLS, routes and matches), upstreams.py (pools, servers, health
checks, TLS to servers), inspection.py (captures, dump filters, toxics), admin.py (the admin
socket and HTTP listener), and files.py, the files they name (certificates to read, paths to write).
"""
