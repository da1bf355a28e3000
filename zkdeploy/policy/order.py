"""Dependency order between services."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from zkdeploy.errors import ConfigError, DependencyCycleError


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """Return one dependency cycle as ``[a, b, ..., a]``, or None if the graph is acyclic.

    ``graph`` maps a service to the services it depends on.  Edges to names that
    are not keys are ignored (unknown services are reported elsewhere).
    """
    white, grey, black = 0, 1, 2
    colour = {name: white for name in graph}
    for root in sorted(graph):
        if colour[root] != white:
            continue
        stack: list[tuple[str, list[str]]] = [(root, sorted(d for d in graph[root] if d in graph))]
        path = [root]
        colour[root] = grey
        while stack:
            node, todo = stack[-1]
            if not todo:
                colour[node] = black
                stack.pop()
                path.pop()
                continue
            dep = todo.pop(0)
            if colour[dep] == grey:
                return [*path[path.index(dep):], dep]
            if colour[dep] == white:
                colour[dep] = grey
                path.append(dep)
                stack.append((dep, sorted(d for d in graph[dep] if d in graph)))
    return None


def dependency_order(graph: Mapping[str, Iterable[str]], wanted: Iterable[str]) -> list[str]:
    """Order ``wanted`` so that every service comes after the services it depends on.

    Only the wanted services are returned; dependencies that are not wanted
    still constrain the order between wanted ones (transitively).  Ties keep
    alphabetical order, so the result is deterministic.  Raises
    DependencyCycleError naming the cycle, or ConfigError for unknown names.
    """
    wanted = list(dict.fromkeys(wanted))
    unknown = [w for w in wanted if w not in graph]
    if unknown:
        raise ConfigError("unknown service(s): " + ", ".join(unknown))
    cycle = find_cycle(graph)
    if cycle:
        raise DependencyCycleError(cycle)

    def ancestors(name: str) -> set[str]:
        seen: set[str] = set()
        todo = [d for d in graph[name] if d in graph]
        while todo:
            dep = todo.pop()
            if dep not in seen:
                seen.add(dep)
                todo.extend(d for d in graph[dep] if d in graph)
        return seen

    deps = {w: ancestors(w) & set(wanted) for w in wanted}
    ordered: list[str] = []
    remaining = set(wanted)
    while remaining:
        ready = sorted(w for w in remaining if not (deps[w] & remaining))
        ordered.extend(ready)
        remaining.difference_update(ready)
    return ordered
