"""Pure decisions: who may connect (allow/deny), where each client goes (the route table), and
which server of a pool is tried next (balancing, health), and the servers DNS answers make
(`discovery`: SRV tiers and weights, the bound, the diff between two answers).

No sockets, no clock, no globals: time and randomness come in as arguments. It may import
`proxy.config` (the schema it decides by) and nothing else of pairproxy.
"""
