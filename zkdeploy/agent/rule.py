"""The one rule for what this node should run, per service, from what ZooKeeper holds.

In order (docs/controlled-deployment.md): a pin on the node; the marks of
the release it runs (bad: back to the newest older release not marked bad;
badfwd: forward to the next newer one that passed its first wave); the open
wave of the active deploy; the most popular version among the service's
online nodes, for a node that returns.  The same rule for a node that never
left and one that returns after an outage, so a returning node lands on what
its wave and the marks say, not on a bad release that happens to be popular.

With trusted keys (``signing.trusted_keys``) only signed marks and pins
count, and an unsigned ``bad`` mark only halts: no step of the rule moves a
node to that version (zkdeploy.agent.signatures.ControlGuard).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from zkdeploy.agent.payloads import Payloads
from zkdeploy.agent.presence import Presence
from zkdeploy.agent.view import View
from zkdeploy.coordination import Store
from zkdeploy.model import ONLINE, PENDING, STOPPED, DeployEntry, Mark, Pin
from zkdeploy.policy import marks as rules
from zkdeploy.policy.versions import most_popular
from zkdeploy.policy.waves import is_open, passed_first_wave, wave_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Want:
    """What one service should do now: restart into ``target`` (for ``deploy``, or by a pin, a mark or
    to converge), or undo a change set a crash interrupted (``recovery``).  Always under a slot."""

    target: str
    deploy: DeployEntry | None = None
    recovery: bool = False

    def same(self, other: Want) -> bool:
        return (self.target, self.recovery, self.deploy and self.deploy.name) == \
            (other.target, other.recovery, other.deploy and other.deploy.name)


class Rule:
    """Evaluates the rule for this node's services; keeps the append-only marks it has read."""

    def __init__(self, store: Store, presence: Presence, payloads: Payloads, view: View) -> None:
        self.store = store
        self.view = view
        self.presence = presence
        self.payloads = payloads
        self.node = presence.node
        self.labels = presence.config.labels.model_dump(exclude_none=True)
        self._marks: dict[str, dict[str, Mark]] = {}
        self.returning: set[str] = set()  # services to bring to the most popular version after a (re)join
        self.why: dict[str, str] = {}     # the last reason a service holds (shown in its /current detail)
        self._pinned: set[str] = set()    # services pinned at the last look
        self._halting: dict[str, dict[str, Mark]] = {}  # unsigned bad marks that only halt (signing on)
        self._control_target: dict[str, str] = {}  # where a pin or a mark sends a service (this evaluation)

    def marks(self, service: str) -> dict[str, Mark]:
        """The marks that count for ``service`` (each record is read once: they are never rewritten).
        With trusted keys, only signed ones (the unsigned bad marks that halt are kept aside)."""
        seen = self._marks.setdefault(service, {})
        seen.update(self.view.marks(service, skip=seen))
        guard = self.payloads.guard
        if guard is None:
            return rules.effective(seen.values())
        counted, self._halting[service] = guard.controls.marks(service, seen)
        return counted

    def pin(self, service: str) -> Pin | None:
        """This node's pin of ``service`` that counts (with trusted keys: the newest signed one)."""
        pin = self.view.pin(service)
        guard = self.payloads.guard
        return pin if guard is None else guard.controls.pin(service, pin)

    def staged(self, service: str) -> dict[str, float]:
        return {v: r.staged_at for v in self.view.staged_versions(service)
                if (r := self.payloads.release(service, v))}

    def evaluate(self, service: str, head: DeployEntry | None, known: list[DeployEntry],
                 failed: set[tuple[str, str]]) -> Want | None:
        """What ``service`` should do now (None: stay).  ``known`` is every deploy entry read so far
        (open and closed); ``failed`` the (deploy, service) pairs whose release failed here."""
        self._control_target.pop(service, None)
        want = self._evaluate(service, head, known, failed)
        guard = self.payloads.guard
        if guard is None:
            return want
        rec = self.presence.local[service]
        if rec.state == ONLINE and rec.version:
            guard.running(service, rec.version)  # a replayed older record cannot send it back from here
        halting = self._halting.get(service, {})
        if want is not None and want.target in halting:
            mark = halting[want.target]
            self._say(service, f"{want.target} is marked bad by an unsigned record ({mark.by}: {mark.why}): not "
                               f"moving to it until an operator signs a mark or an unmark")
            want = None
        moved_by_control = want is not None and self._control_target.get(service) == want.target
        guard.authorize(service, want.target if want is not None and moved_by_control else None)
        return want

    def _evaluate(self, service: str, head: DeployEntry | None, known: list[DeployEntry],
                  failed: set[tuple[str, str]]) -> Want | None:
        rec = self.presence.local[service]
        marks = self.marks(service)
        running = rec.version if rec.state in (ONLINE, "failed") else None
        pin = self.pin(service)
        if pin is not None and pin.active(time.time()):
            self._pinned.add(service)
        elif service in self._pinned:  # unpinned, or the pin lapsed: converge like a node that returns
            self._pinned.discard(service)
            self.returning.add(service)
        decision = rules.decide(running, pin, marks, self.staged(service),
                                {e.version for e in known if e.service == service and passed_first_wave(e)},
                                time.time())
        if decision.target is not None:
            self._say(service, decision.why)
            self._control_target[service] = decision.target
            return Want(decision.target)
        if decision.hold:
            self._say(service, decision.why)
            return None
        if decision.why:
            self._say(service, decision.why)  # marked, with nowhere to go: only a deploy's wave moves it
        if head is not None and head.service == service:
            if head.state != PENDING or rules.is_bad(marks, head.version) or (head.name, service) in failed \
                    or any(f.get("node") == self.node for f in head.failures):
                return None  # paused, halted, marked bad; or its release failed here
            if rec.version == head.version and rec.state != STOPPED:
                return None  # at the target: a failing service there is the monitor's news, not a restart
            if head.nodes and self.node not in head.nodes:
                self._say(service, f"not selected by deploy {head.name} ({head.select})")
                return None
            wave = wave_of(head, self.node, self.labels)
            if not is_open(head, wave):
                self._say(service, f"in wave {head.waves[wave]['name']}, which is not open yet")
                return None
            return Want(head.version, head)
        if service not in self.returning or any(e.service == service and e.is_open for e in known):
            return None  # an open rollout of this service decides first; the node converges after it
        target = self.most_popular(service, marks)
        if target is None or (target == rec.version and rec.state != STOPPED):
            self.returning.discard(service)
            return None
        self._say(service, f"{rec.state} at {rec.version or '-'}; the most popular version is {target}: converging")
        return Want(target)

    def most_popular(self, service: str, marks: dict[str, Mark] | None = None) -> str | None:
        """The version a returning node should run: the most popular among the service's online
        nodes, this one included (so every node applies the same rule to the same count), never
        one marked bad.  Ties go to the most recently staged version.  None when there is none to
        run, or it is neither staged nor installed here."""
        marks = self.marks(service) if marks is None else marks
        versions = [e.version for n, e in self.store.current(service).items()
                    if e.state == ONLINE and n != self.node]
        rec = self.presence.local[service]
        if rec.state == ONLINE:
            versions.append(rec.version)
        staged = self.staged(service)
        target = most_popular([v for v in versions if not rules.is_bad(marks, v)], staged) or rec.version
        if target and target not in staged and not self.payloads.host.releases[service].has(target):
            log.warning("%s: most popular version %s is neither staged nor installed here", service, target)
            return None
        return target or None

    def _say(self, service: str, why: str) -> None:
        if self.why.get(service) != why:
            self.why[service] = why
            log.info("%s: %s", service, why)
            self.presence.publish(service, detail=why)
