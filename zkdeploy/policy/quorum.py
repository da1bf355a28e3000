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


def required_online(quorum: int | str, members: int) -> int:
    """The number of nodes that must stay online for a service of ``members`` members.

    A percentage is of the service's members (every node that has registered
    it and was not forgotten, present or not), not of the nodes present at
    the moment, and rounds up: ``67%`` of 6 members is 5, whether or not all
    6 are present.  A count is used as it is.
    """
    parsed = parse_quorum(quorum)
    if isinstance(parsed, float):
        return math.ceil(round(parsed * members, 9))
    return parsed


@dataclass(frozen=True)
class QuorumDecision:
    """Whether a node may go down now, and the figures behind the answer."""

    allowed: bool
    online: int
    required: int
    present: int
    reason: str
    members: int = 0

    @property
    def absent(self) -> int:
        """Members with no entry in /current: they count as down."""
        return max(0, self.members - self.present)


def figures(online: int, members: int, absent: int, required: int) -> str:
    """The figures of a quorum decision in words: ``5 online of 6 members (1 absent), quorum 5``
    (``members`` and ``absent`` are named only when a member is absent)."""
    if absent > 0:
        return f"{online} online of {members} members ({absent} absent), quorum {required}"
    return f"{online} online, quorum {required}"


def may_go_down(*, online: int, present: int, members: int, quorum: int | str,
                self_online: bool) -> QuorumDecision:
    """Decide whether one more node may leave service.

    ``online`` counts the present nodes whose entry says online (self
    included when ``self_online``); ``present`` the nodes with an entry in
    /current; ``members`` the service's known members, present or not (a
    present node always counts as one, so ``members`` is at least
    ``present``).  The requirement is figured on ``members``, and an absent
    member counts as down: a node whose session expired while it was
    restarting does not lower the quorum while it is still down.

    Allowed exactly when self is not online (a node that is not online
    costs no quorum to restart, so a fleet that is down can always be
    started), or when ``online - 1`` is at least the required count.
    """
    members = max(members, present)
    required = required_online(quorum, members)
    absent = members - present
    if not self_online:
        return QuorumDecision(True, online, required, present, "not online: restarting costs no quorum", members)
    said = figures(online, members, absent, required)
    if online - 1 >= required:
        return QuorumDecision(True, online, required, present, said, members)
    return QuorumDecision(False, online, required, present, f"waiting for quorum: {said}", members)


def max_unavailable(quorum: int | str, members: int) -> int:
    """How many of a service's ``members`` may be down at once (absent members included)."""
    return max(0, members - required_online(quorum, members))


def failure_budget(max_failures: int | str, fleet_size: int) -> int:
    """How many nodes may fail their restart before a deploy stops; a percentage rounds down."""
    parsed = parse_quorum(max_failures, "max_failures")
    if isinstance(parsed, float):
        return math.floor(round(parsed * fleet_size, 9))
    return parsed
