"""The access-log line: one per connection, written by the pair's `finish`, however it ended."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.relay.pair import Pair


def access_fields(pair: Pair, result: str, reason: str | None, close_by: str) -> dict[str, object]:
    """The fields of `pair`'s access line, which ended with `result` (`reason`), by `close_by`.
    Without a reason, a TLS stream that ended without close_notify says so, else the routing note."""
    upstream = pair.upstream
    if reason is None:
        truncated = (side.name for side in (pair.client, upstream) if side is not None and side.truncated())
        reason = next((f"{name}: no close_notify" for name in truncated), pair.note)
    tls_fields = {"sni": pair.sni, **pair.client.log_fields()}
    if pair.protocol is not None:  # a peek at the first bytes found out what they are
        tls_fields.update(protocol=pair.protocol, alpn=pair.alpn, host=pair.host)
    if upstream is not None:
        tls_fields.update(upstream.log_fields())
    if pair.credentials is not None:
        tls_fields.update(pair.credentials)
    return dict(
        conn=pair.conn,
        listener=pair.settings.listener,
        route=pair.route,
        client=pair.client.address,
        server=upstream.address if upstream is not None else pair.server,
        bytes_up=pair.client.bytes_read,
        bytes_down=upstream.bytes_read if upstream is not None else 0,
        duration_ms=int((pair.runtime.reactor.now - pair.started) * 1000),
        result=result,
        reason=reason,
        close_by=close_by,
        connect_ms=None if pair.connect_ms is None else f"{pair.connect_ms:.3f}",
        faults=None if pair.inspection is None else pair.inspection.fault_names,
        **tls_fields,
    )
