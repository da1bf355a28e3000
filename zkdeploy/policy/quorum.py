"""Quorum arithmetic: may one more node of a service go down now?"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from zkdeploy.errors import ConfigError

_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


def parse_quorum(value: object, what: str = "quorum") -> int | float:
    """Return an int count, or a float fraction in (0, 1] for a percentage string; ConfigError for anything else."""
    if isinstance(value, bool):
        raise ConfigError(f"{what} {value!r}: expected a count or a percentage like '66%'")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{what} {value}: must not be negative")
        return value
    if isinstance(value, str):
        match = _PERCENT.match(value)
        if match:
            pct = float(match.group(1))
            if not 0 <= pct <= 100:
                raise ConfigError(f"{what} {value!r}: a percentage must be between 0% and 100%")
            return pct / 100.0
        if value.strip().isdigit():
            return int(value.strip())
    raise ConfigError(f"{what} {value!r}: expected a count or a percentage like '66%'")


def required_online(quorum: int | str, fleet_size: int) -> int:
    """The number of nodes that must stay online for a fleet of ``fleet_size``.

    A percentage is of the nodes present in ``/dc/current`` for the service and
    rounds up, so ``67%`` of 6 nodes is 5.
    """
    parsed = parse_quorum(quorum)
    if isinstance(parsed, float):
        return math.ceil(round(parsed * fleet_size, 9))
    return parsed


@dataclass(frozen=True)
class QuorumDecision:
    """Whether a node may go down now, and the figures behind the answer."""

    allowed: bool
    online: int
    required: int
    present: int
    reason: str


def may_go_down(*, online: int, present: int, quorum: int | str, self_online: bool) -> QuorumDecision:
    """Decide whether one more node may leave service.

    ``online`` counts nodes whose state is online (self included when
    ``self_online``).  A node that is not online costs no quorum to restart,
    so a fleet that is down can always be started.
    """
    required = required_online(quorum, present)
    if not self_online:
        return QuorumDecision(True, online, required, present, "not online: restarting costs no quorum")
    if online - 1 >= required:
        return QuorumDecision(True, online, required, present, f"{online} online, quorum {required}")
    return QuorumDecision(
        False, online, required, present, f"waiting for quorum: {online} online, quorum {required}"
    )


def max_unavailable(quorum: int | str, fleet_size: int) -> int:
    """How many nodes may be down at once for a fleet of ``fleet_size``."""
    return max(0, fleet_size - required_online(quorum, fleet_size))


def failure_budget(max_failures: int | str, fleet_size: int) -> int:
    """How many nodes may fail their restart before a deploy stops; a percentage rounds down."""
    parsed = parse_quorum(max_failures, "max_failures")
    if isinstance(parsed, float):
        return math.floor(round(parsed * fleet_size, 9))
    return parsed
