"""Waves: a rollout in health-gated steps through the fleet (etch's controlled deployment).

A deploy with waves records, when it is queued, each wave's spec and the
nodes it took then (``resolve``).  Nodes in the open wave and the waves
before it roll under the quorum rules as usual (counted over the whole
service); nodes in later waves hold.  ``advance`` is the one decision that
moves a deploy's waves: it verifies the open wave once each of its nodes
runs the release and stayed healthy for ``min_healthy_time``, and opens the
next one when its age, soak and approval allow.  Pure functions of a
snapshot, so every agent (and ``status``) reaches the same answer.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from zkdeploy.errors import ConfigError
from zkdeploy.model import ONLINE, CurrentEntry, DeployEntry
from zkdeploy.policy.selector import parse, slice_point


def resolve(waves: Sequence[Mapping[str, Any]], nodes: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each wave's spec with the ``nodes`` it takes from ``nodes`` (name -> labels), in order.

    A node goes to the first wave that selects it; ``select: '*'`` takes what
    is left.  ConfigError when two waves with explicit selectors both select
    a node (overlapping waves), or a wave with an explicit selector selects
    no node.
    """
    taken: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    problems: list[str] = []
    for spec in waves:
        selector = parse(str(spec.get("select", "*")))
        explicit = str(spec.get("select", "*")).strip() != "*"
        matching = sorted((n for n, labels in nodes.items() if selector.matches(n, labels)), key=slice_point)
        if explicit:
            for node in matching:
                if node in taken:
                    problems.append(f"overlapping waves: node {node} is selected by wave {taken[node]} "
                                    f"and by wave {spec['name']}")
        mine = [n for n in matching if n not in taken]
        if spec.get("canary"):
            mine = mine[: int(spec["canary"])]
        if explicit and not mine and not any(p.endswith(f"wave {spec['name']}") for p in problems):
            problems.append(f"wave {spec['name']}: its selector {selector} matches no node")
        for node in mine:
            taken[node] = str(spec["name"])
        out.append({**spec, "nodes": sorted(mine)})
    if problems:
        raise ConfigError("the wave plan cannot be used", problems)
    return out


def wave_of(entry: DeployEntry, node: str, labels: Mapping[str, Any]) -> int:
    """The wave of ``node`` in ``entry``: the one that took it when the deploy was queued; a node
    that registered later goes to the first non-canary wave that selects it, else the last."""
    for index, wave in enumerate(entry.waves):
        if node in wave.get("nodes", ()):
            return index
    for index, wave in enumerate(entry.waves):
        if not wave.get("canary") and parse(str(wave.get("select", "*"))).matches(node, labels):
            return index
    return max(0, len(entry.waves) - 1)


@dataclass(frozen=True)
class WaveState:
    """Where one wave stands, for ``status`` and for the agents' decisions."""

    index: int
    name: str
    nodes: tuple[str, ...]
    at_version: int
    state: str  # verified, open, waiting
    reason: str


def _log(entry: DeployEntry) -> list[dict[str, Any]]:
    log = [dict(item) for item in entry.wave_log]
    while len(log) < len(entry.waves):
        log.append({})
    return log


def members_of(entry: DeployEntry, index: int, present: Collection[str],
               labels: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The present nodes in wave ``index`` (those recorded, and later arrivals it selects)."""
    return sorted(n for n in present if wave_of(entry, n, labels.get(n, {})) == index)


def advance(entry: DeployEntry, current: Mapping[str, CurrentEntry], labels: Mapping[str, Mapping[str, Any]],
            staged_at: float, mark: str | None, now: float | None = None,
            excused: Collection[str] = ()) -> tuple[DeployEntry | None, str]:
    """The entry with its waves moved one step on, or None when nothing moves now; and, in words,
    what the next step waits for.

    The steps, in order: open the current wave when its age, soak and approval
    allow; verify it once each of its nodes (but ``excused`` ones: failed
    within the budget, pinned elsewhere) runs the release and stayed healthy
    for ``min_healthy_time``; move on to the next wave.  ``mark`` is the
    release's mark (``good`` is needed where a wave requires it).
    """
    now = time.time() if now is None else now
    if not entry.waves:
        return None, ""
    index = min(entry.wave, len(entry.waves) - 1)
    log = _log(entry)
    wave = entry.waves[index]
    if not log[index].get("opened"):
        why = _closed_because(entry, index, log, staged_at, mark, now)
        if why:
            return None, why
        log[index] = {**log[index], "opened": now}
        return entry.evolve(wave_log=tuple(log)), f"wave {wave['name']} opened"
    if not log[index].get("verified"):
        nodes = [n for n in members_of(entry, index, current, labels) if n not in excused]
        done = [n for n in nodes if current[n].state == ONLINE and current[n].version == entry.version]
        if len(done) < len(nodes):
            return None, f"wave {wave['name']}: {len(done)}/{len(nodes)} node(s) at {entry.version}"
        settle = float(wave.get("min_healthy_time") or 0)
        young = [n for n in done if now - current[n].since < settle]
        if young:
            left = max(settle - (now - current[n].since) for n in young)
            return None, f"wave {wave['name']}: healthy for {settle:g}s on every node ({left:.0f}s to go)"
        log[index] = {**log[index], "verified": now}
        return entry.evolve(wave_log=tuple(log)), f"wave {wave['name']} verified"
    if index + 1 >= len(entry.waves):
        return None, "every wave verified"
    return entry.evolve(wave=index + 1), f"wave {entry.waves[index + 1]['name']} is next"


def _closed_because(entry: DeployEntry, index: int, log: list[dict[str, Any]], staged_at: float,
                    mark: str | None, now: float) -> str:
    """Why wave ``index`` may not open yet ('' when it may)."""
    wave = entry.waves[index]
    opens = staged_at + float(wave.get("min_age") or 0)
    if index > 0:
        opens = max(opens, float(log[index - 1].get("verified") or now) + float(wave.get("soak") or 0))
    if now < opens:
        return f"wave {wave['name']} opens in {opens - now:.0f}s"
    if wave.get("approval") and not log[index].get("approved_by"):
        return f"wave {wave['name']} waits for approval (zkdeploy promote {entry.name})"
    if wave.get("require_good") and mark != "good":
        return f"wave {wave['name']} takes only a release marked good ({entry.version} is {mark or 'unmarked'})"
    return ""


def is_open(entry: DeployEntry, index: int) -> bool:
    """Whether the nodes of wave ``index`` may roll now: an earlier wave, or the current one once opened."""
    if not entry.waves:
        return True
    if index < entry.wave:
        return True
    return index == entry.wave and bool(_log(entry)[index].get("opened"))


def passed_first_wave(entry: DeployEntry) -> bool:
    """Whether ``entry``'s release got through its first wave (or the whole deploy, without waves)."""
    if entry.waves:
        log = _log(entry)
        return bool(log[0].get("verified"))
    return entry.state == "done"


def states(entry: DeployEntry, current: Mapping[str, CurrentEntry],
           labels: Mapping[str, Mapping[str, Any]], reason: str) -> list[WaveState]:
    """Each wave of ``entry``: its nodes, how many run the release, and whether it is verified,
    open or waiting (with ``reason`` for the first one that waits)."""
    log = _log(entry)
    out = []
    for index, wave in enumerate(entry.waves):
        nodes = members_of(entry, index, current, labels)
        at = sum(1 for n in nodes if current[n].version == entry.version and current[n].state == ONLINE)
        if log[index].get("verified"):
            state, why = "verified", ""
        elif is_open(entry, index):
            state, why = "open", reason if index == entry.wave else ""
        else:
            state, why = "waiting", reason if index == entry.wave else "the waves before it"
        out.append(WaveState(index, str(wave["name"]), tuple(nodes), at, state, why))
    return out
