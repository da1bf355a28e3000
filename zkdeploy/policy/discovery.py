"""Discovery: which nodes a selector takes, counted before anything changes (mcollective's pre-discovery).

Pure functions of what ZooKeeper holds.  A node is seen through one mapping
(``view``): its facts, its labels over them, ``classes`` (a list), and for
each service it runs ``<service>.version`` and ``<service>.state`` from
/current.  ``expect`` is ``N`` or ``MIN..MAX`` (either side may be left
open: ``3..``, ``..10``).  After a deploy, ``answers`` names the discovered
nodes that never answered and any that answered without being discovered
(mcollective's ``noresponsefrom`` / ``unexpectedresponsefrom``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from zkdeploy.errors import ConfigError, DeployRefusedError
from zkdeploy.model import CurrentEntry, NodeRecord
from zkdeploy.policy.selector import parse


def view(record: NodeRecord, current: Mapping[str, Mapping[str, CurrentEntry]]) -> dict[str, Any]:
    """What a selector reads for ``record``'s node; ``current`` is /current by service, then node."""
    out: dict[str, Any] = dict(record.facts)
    out.update(record.labels)
    classes = out.get("classes", [])
    out["classes"] = list(classes) if isinstance(classes, (list, tuple)) else [str(classes)]
    for service, entries in current.items():
        entry = entries.get(record.node)
        if entry is not None:
            out[f"{service}.version"] = entry.version or ""
            out[f"{service}.state"] = entry.state
    out.setdefault("services", list(record.services))
    return out


def discover(expr: str, nodes: Mapping[str, NodeRecord],
             current: Mapping[str, Mapping[str, CurrentEntry]]) -> list[str]:
    """The present nodes ``expr`` selects, sorted; ConfigError for an expression that does not parse."""
    selector = parse(expr)
    return sorted(n for n, rec in nodes.items() if selector.matches(n, view(rec, current)))


@dataclass(frozen=True)
class Expect:
    """How many nodes a discovery must find: ``low`` to ``high`` inclusive (None: open)."""

    low: int | None
    high: int | None

    def admits(self, count: int) -> bool:
        return (self.low is None or count >= self.low) and (self.high is None or count <= self.high)

    def __str__(self) -> str:
        if self.low == self.high:
            return str(self.low)
        return f"{'' if self.low is None else self.low}..{'' if self.high is None else self.high}"


_EXPECT = re.compile(r"^\s*(\d*)\s*(\.\.\s*(\d*))?\s*$")


def parse_expect(text: str) -> Expect:
    """``N`` or ``MIN..MAX`` (a side may be empty); ConfigError otherwise."""
    match = _EXPECT.match(text)
    if match is None or (not match.group(1) and not match.group(3)):
        raise ConfigError(f"--expect {text!r}: give a count N or a range MIN..MAX")
    low = int(match.group(1)) if match.group(1) else None
    high = (int(match.group(3)) if match.group(3) else None) if match.group(2) else low
    if low is not None and high is not None and low > high:
        raise ConfigError(f"--expect {text!r}: MIN is above MAX")
    return Expect(low, high)


def check_count(expr: str, found: list[str], expect: Expect | None) -> None:
    """DeployRefusedError (exit 2) when ``found`` is empty or its count is not what was expected."""
    if not found:
        raise DeployRefusedError(f"--select {expr!r} matches no node; nothing changed")
    if expect is not None and not expect.admits(len(found)):
        raise DeployRefusedError(f"--select {expr!r} found {len(found)} node(s), expected {expect}; "
                                 f"nothing changed. Found: {', '.join(found)}")


@dataclass(frozen=True)
class Answers:
    """How the discovered nodes answered a deploy of ``version``."""

    answered: tuple[str, ...]     # discovered and running the version (or failed trying: they answered)
    no_response: tuple[str, ...]  # discovered and neither: absent, or never got there
    unexpected: tuple[str, ...]   # not discovered, yet heading to or restarted into the version for it


def answers(discovered: Iterable[str], version: str, entries: Mapping[str, CurrentEntry],
            failed: Iterable[str] = (), before: Mapping[str, str | None] | None = None) -> Answers:
    """Compare the discovered set with /current of the service (``entries``) after (or during) a deploy.

    A node outside the set is unexpected when its entry targets ``version``
    or runs it while ``before`` (its version at discovery) said otherwise.
    """
    chosen = set(discovered)
    failed_set = set(failed)
    answered = sorted(n for n in chosen if n in failed_set
                      or ((e := entries.get(n)) is not None and e.version == version))
    missing = sorted(chosen - set(answered))
    before = before or {}
    unexpected = sorted(n for n, e in entries.items() if n not in chosen and (
        e.target == version or (e.version == version and n in before and before[n] != version)))
    return Answers(tuple(answered), tuple(missing), tuple(unexpected))
