"""Release marks and pins: the first two steps of the one rule for what a node should run.

The rule, evaluated by each agent for each of its services from what
ZooKeeper holds (docs/controlled-deployment.md):

1. a **pin** on the node (not expired): run the pinned release, whatever
   the later steps say;
2. the **marks**: a node running a release marked ``bad`` goes back to the
   newest older release not marked bad; one running a release marked
   ``badfwd`` goes forward to the next newer release not marked bad that
   passed its first wave; while there is none it holds where it is, unless
   the open wave of a deploy of a release not marked bad takes it;
3. the open **wave** of the active deploy (zkdeploy.policy.waves);
4. the **most popular** version among the service's online nodes (for a
   node that returns), never one marked bad.

Every change a rule asks for still goes through the quorum rules.  With
trusted keys, the agent passes only the signed marks and pins here
(zkdeploy.agent.signatures.ControlGuard); ``effective`` is then the CLI's view
of what is stored.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from zkdeploy.model import Mark, Pin

BAD = "bad"
BADFWD = "badfwd"
GOOD = "good"


def effective(marks: Iterable[Mark]) -> dict[str, Mark]:
    """The mark that counts for each version: the latest record of it (``none`` unmarks)."""
    latest: dict[str, Mark] = {}
    for mark in sorted(marks, key=lambda m: m.at):
        latest[mark.version] = mark
    return {v: m for v, m in latest.items() if m.mark != "none"}


def is_bad(marks: Mapping[str, Mark], version: str | None) -> bool:
    mark = marks.get(version or "")
    return mark is not None and mark.mark in (BAD, BADFWD)


@dataclass(frozen=True)
class Decision:
    """What steps 1 and 2 of the rule say: ``target`` to move to, or ``hold`` where the node is (a pin:
    nothing else moves it), and why.  Neither: the later steps (the open wave of the active deploy,
    the most popular version) decide; ``why`` then says why the marks did not move the node."""

    target: str | None = None
    hold: bool = False
    why: str = ""


def decide(running: str | None, pin: Pin | None, marks: Mapping[str, Mark], staged: Mapping[str, float],
           passed_first_wave: Collection[str], now: float) -> Decision:
    """Steps 1 and 2 of the rule for one service on one node.

    ``staged`` maps each staged version to when it was staged (the order of
    releases); ``passed_first_wave`` names the versions whose deploy got
    through its first wave.
    """
    if pin is not None and pin.active(now):
        if pin.version == running:
            return Decision(hold=True, why=f"pinned to {pin.version}")
        return Decision(target=pin.version, why=f"pinned to {pin.version}: {pin.why}")
    mark = marks.get(running or "")
    if mark is None or mark.mark not in (BAD, BADFWD):
        return Decision()
    order = sorted(staged, key=lambda v: (staged[v], v))
    here = staged.get(running or "")
    if mark.mark == BAD:
        older = [v for v in order if here is not None and staged[v] < here and not is_bad(marks, v)]
        if older:
            return Decision(target=older[-1], why=f"{running} is marked bad ({mark.why}): back to {older[-1]}")
        return Decision(why=f"{running} is marked bad, and no older release is not: holding")
    newer = [v for v in order if here is not None and staged[v] > here and not is_bad(marks, v)
             and v in passed_first_wave]
    if newer:
        return Decision(target=newer[0], why=f"{running} is marked badfwd ({mark.why}): forward to {newer[0]}")
    return Decision(why=f"{running} is marked badfwd: holding until a newer release passes its first wave")
