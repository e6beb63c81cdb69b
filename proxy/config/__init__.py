"""The configuration: schema.py (frozen dataclasses), units.py (the values users type:
addresses, durations, sizes), dumping.py, faults.py and sockets.py (dump filters, toxic specs
and socket options as people write them), the YAML loader with located errors (loader.py, the
node reader reader.py and one module per part of the table in sections/), checks.py (the checks
across a whole table) and certificates.py (certificate files).

Only the loader, the reader and the sections import yaml. Nothing here opens a socket or runs
on the loop; it may import `proxy.errors` and `proxy.output` only.
"""
