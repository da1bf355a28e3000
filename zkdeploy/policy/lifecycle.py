"""The lifecycle of a deploy entry (``/dc/deploy/<seq>``): every state, every allowed move, who makes it.

An entry is queued ``pending``.  Every later change of its state (and every
bookkeeping write that keeps its state) goes through ``transition``, which
checks the move against ``DEPLOY_TRANSITIONS`` and nothing else::

    pending                  ── pause (operator) ──────────────────────────► paused
    paused, halted           ── resume (operator) ─────────────────────────► pending
    pending, paused          ── failures past the budget, on_failure: pause ► halted       (agent)
    pending, paused          ── failures past the budget, on_failure: rollback
                                (a rollback deploy is queued with it) ─────► rolled_back  (agent)
    pending                  ── every present node runs the version ───────► done         (agent)
    pending, paused, halted  ── abort or rollback (operator); an earlier
                                deploy of the same request rolled back ────► aborted      (operator, agent)

An ``agent`` move is made by a *steward* (zkdeploy.agent.deploys): any agent
without ACL roles, the agents holding the steward role under them.

``done``, ``aborted`` and ``rolled_back`` are terminal: nothing moves an entry
out of them.  Each open state also has a move to itself that an agent makes:
recording a failure within the budget, or a stall, or a wave's progress
(pending only).  A pending entry's move to itself is also an operator's:
``zkdeploy promote`` records a wave's approval (``wave_log[i].approved_by``).

The bookkeeping that comes with a move is done here too: entering a terminal
state sets ``finished``; any other state has none; leaving ``pending`` clears
``stalled_since`` (only a pending deploy can be stalled).

Pure: no I/O.  The diagram with the table is in docs/deploy-states.md.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from zkdeploy.errors import DeployTransitionError
from zkdeploy.model import DeployEntry, DeployState


class Actor(StrEnum):
    """Who asks for a move."""

    OPERATOR = "operator"  # a zkdeploy command (abort, pause, resume, rollback, promote)
    AGENT = "agent"        # an agent's bookkeeping (failures, completion, stalls)


@dataclass(frozen=True)
class Move:
    """One allowed move: who may make it, and on what occasion."""

    by: frozenset[Actor]
    why: str


S = DeployState
_OP = frozenset({Actor.OPERATOR})
_AGENT = frozenset({Actor.AGENT})
_BOTH = _OP | _AGENT
_ABORT = Move(_BOTH, "zkdeploy abort, or zkdeploy rollback of its service (operator); an earlier deploy of "
                     "the same request was rolled back, and this one depended on it (agent)")
_HALT = Move(_AGENT, "a failure past the failure budget, with on_failure: pause (or nothing to roll back to)")
_ROLL_BACK = Move(_AGENT, "a failure past the failure budget, with on_failure: rollback; "
                          "a rollback deploy to the version it replaced is queued in the same transaction")
_RESUME = Move(_OP, "zkdeploy resume (from halted, the failure budget is raised to the failures it had)")

#: state -> {next state: Move}; a state with no moves is terminal
DEPLOY_TRANSITIONS: Mapping[DeployState, Mapping[DeployState, Move]] = {
    S.PENDING: {
        S.PENDING: Move(_BOTH, "a failure within the budget recorded; a stall recorded or cleared; a wave opened "
                               "or verified (agent); zkdeploy promote records a wave's approval (operator)"),
        S.PAUSED: Move(_OP, "zkdeploy pause"),
        S.HALTED: _HALT,
        S.ROLLED_BACK: _ROLL_BACK,
        S.DONE: Move(_AGENT, "every present node runs the version (nodes that failed within the budget excused)"),
        S.ABORTED: _ABORT,
    },
    S.PAUSED: {
        S.PAUSED: Move(_AGENT, "a failure within the budget recorded (a restart under way when it was paused)"),
        S.PENDING: _RESUME,
        S.HALTED: _HALT,
        S.ROLLED_BACK: _ROLL_BACK,
        S.ABORTED: _ABORT,
    },
    S.HALTED: {
        S.HALTED: Move(_AGENT, "another failure recorded (a restart under way when it halted)"),
        S.PENDING: _RESUME,
        S.ABORTED: _ABORT,
    },
    S.DONE: {},
    S.ABORTED: {},
    S.ROLLED_BACK: {},
}

#: states nothing moves an entry out of
TERMINAL: frozenset[DeployState] = frozenset(s for s, moves in DEPLOY_TRANSITIONS.items() if not moves)

#: fields that only ``transition`` itself sets
_OWN_FIELDS = frozenset({"state", "finished", "name", "zversion"})


def _known(state: str) -> DeployState | None:
    try:
        return DeployState(state)
    except ValueError:
        return None


def next_states(state: str, by: Actor | None = None) -> tuple[DeployState, ...]:
    """The states an entry in ``state`` may move to (by ``by``, or by anyone), in the table's order;
    empty for a terminal or unknown state."""
    current = _known(state)
    moves = DEPLOY_TRANSITIONS.get(current, {}) if current is not None else {}
    return tuple(s for s, move in moves.items() if by is None or by in move.by)


def can(entry: DeployEntry, new: str, *, by: Actor) -> bool:
    """True when ``by`` may move ``entry`` to ``new`` (``transition`` would not refuse it)."""
    return _known(new) in next_states(entry.state, by)


def transition(entry: DeployEntry, new: str, *, by: Actor, message: str, at: float | None = None,
               **changes: Any) -> DeployEntry:
    """``entry`` moved to ``new`` by ``by``, with ``message`` and the other field ``changes``.

    Returns the evolved entry (same znode version, so that writing it is
    conditional on nobody having changed it since it was read); the caller
    writes it.  Entering a terminal state sets ``finished`` to ``at`` (default
    now); any other state has ``finished`` None; any state but pending has
    ``stalled_since`` None.

    Raises DeployTransitionError, naming the entry, both states and where
    ``by`` could move it instead, when the table does not allow the move;
    nothing is changed then.  ``changes`` may not set ``state``, ``finished``,
    ``name`` or ``zversion`` (TypeError), nor a stall on a state other than
    pending (ValueError): those are programming errors, not refusals.
    """
    own = _OWN_FIELDS & changes.keys()
    if own:
        raise TypeError(f"transition() sets {', '.join(sorted(own))} itself")
    target = _known(new)
    if target is None or not can(entry, target, by=by):
        raise _refusal(entry, str(new), by)
    if target is not S.PENDING:
        if changes.get("stalled_since") is not None:
            raise ValueError(f"only a pending deploy can be stalled, not a {target} one")
        changes["stalled_since"] = None
    finished = (time.time() if at is None else at) if target in TERMINAL else None
    return entry.evolve(state=target, message=message, finished=finished, **changes)


def _refusal(entry: DeployEntry, new: str, by: Actor) -> DeployTransitionError:
    what = f"deploy {entry.name or '(unnamed)'} ({entry.service}@{entry.version})"
    current = _known(entry.state)
    allowed = next_states(entry.state, by)
    if current is None:
        why = f"is in an unknown state {entry.state!r} (written by a newer zkdeploy?): it cannot become {new}"
    elif _known(new) is None:
        why = f"is {current}: {new!r} is not a deploy state (states: {', '.join(DeployState)})"
    elif current in TERMINAL:
        why = f"is {current}, which is final: it cannot become {new}"
    else:
        who = "an operator" if by is Actor.OPERATOR else "an agent"
        instead = (f"from {current} {who} can make it {' or '.join(allowed)}" if allowed
                   else f"{who} cannot move it from {current}")
        why = f"is {current}: {who} cannot make it {new}; {instead}"
    return DeployTransitionError(f"{what} {why}; nothing was changed", deploy=entry.name, current=entry.state,
                                 requested=new, allowed=tuple(str(s) for s in allowed))
