"""The configuration: its schema (frozen dataclasses), the values users type (addresses,
durations, sizes), the YAML loader with located errors, the checks across a whole table, and
certificate files.

The loader is the only importer of yaml. Nothing here opens a socket or runs on the loop; it
may import `proxy.errors` only.
"""
