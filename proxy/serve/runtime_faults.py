"""Faults changed at run time (the admin socket's `fault add`, `fault remove`, `fault list`): the
toxics of a listener or of a named route, for the connections accepted from now on, until the
next reload. Each listener's table is rebuilt with its new faults."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING

from proxy.config.faults import Faults, format_fault, parse_fault, parse_fault_type
from proxy.config.units import did_you_mean
from proxy.policy.faults import FaultPlan

if TYPE_CHECKING:
    from proxy.serve.frontend import Frontend


def add(frontends: Iterable[Frontend], target: str, spec: str) -> str:
    """Add the toxic `spec` (TYPE:KEY=VALUE,...) to the listener or route named `target`.

    It applies to connections accepted from now on, until the next reload; ValueError says
    what is wrong with the spec or the target.
    """
    fault = parse_fault(spec)
    _change(frontends, target, lambda faults: tuple(dict.fromkeys((*faults, fault))))
    return f"{target}: added {format_fault(fault)}"


def remove(frontends: Iterable[Frontend], target: str, kind: str) -> str:
    """Remove the toxics of type `kind` from the listener or route named `target` (new connections)."""
    kind = parse_fault_type(kind)
    removed = _change(frontends, target, lambda faults: tuple(fault for fault in faults if fault.type != kind))
    if not removed:
        raise ValueError(f"{target} has no {kind} fault")
    return f"{target}: removed {removed} {kind} fault{'s' if removed > 1 else ''}"


def listed(frontends: Iterable[Frontend]) -> list[str]:
    """`TARGET: SPEC`, one line per toxic of each listener, then of each of its named routes."""
    lines = []
    for frontend in frontends:
        config = frontend.table.config
        lines.extend(f"{frontend.name}: {format_fault(fault)}" for fault in config.faults)
        for route in config.routes:
            lines.extend(f"{route.name}: {format_fault(fault)}" for fault in route.faults if route.name)
    return lines


def _change(frontends: Iterable[Frontend], target: str, change: Callable[[Faults], Faults]) -> int:
    """Apply `change` to the faults of each listener and named route called `target`, for new
    connections (each listener's table is rebuilt with them); how many toxics fewer there are."""
    names: list[str] = []
    fewer: int | None = None  # None: no such target
    for frontend in frontends:
        table = frontend.table
        config = table.config
        here = [frontend.name, *(route.name for route in config.routes if route.name is not None)]
        names.extend(here)
        if target not in here:
            continue
        fewer = fewer or 0
        if frontend.name == target:
            faults = change(config.faults)
            fewer += len(config.faults) - len(faults)
            config = replace(config, faults=faults)
        routes = []
        for route in config.routes:
            if route.name == target:
                faults = change(route.faults)
                fewer += len(route.faults) - len(faults)
                route = replace(route, faults=faults)
            routes.append(route)
        config = replace(config, routes=tuple(routes))
        frontend.apply(replace(table, config=config, settings=replace(table.settings, faults=FaultPlan.of(config))))
    if fewer is None:
        raise ValueError(f"no listener or route named {target!r}{did_you_mean(target, names)}")
    return fewer
