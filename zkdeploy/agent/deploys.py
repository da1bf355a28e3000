"""What nodes report on deploys, and what stewards write on deploy entries from it.

A node reports only its own failure, as a record of its own under the
entry's failures parent (``failures/<seal>/<node>``); it never writes the
entry.  A *steward* writes an entry's progress: it folds the nodes'
reports into the entry (past the failure budget: a halt, a rollback), opens
and verifies waves, records stalls, and marks the entry done.  Without ACL
roles every agent may steward (the node that just restarted, and one node
per service each cycle); under roles only the agents holding the steward
role do (``Store.stewards``), so one agent credential cannot halt, finish or
rewrite a rollout.  Until a steward records a halt, every agent reads the
reports itself (``as_judged``) and starts no restart for a deploy its
reports put past the budget.

Every write of an entry is conditional on its znode version, so concurrent
stewards never overwrite each other and the loser of a race re-reads, and
is a move of its lifecycle (zkdeploy.policy.lifecycle) made by ``Actor.AGENT``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from tenacity import RetryError, retry, retry_if_exception_type, stop_after_attempt, wait_random

from zkdeploy.coordination import Store
from zkdeploy.errors import AccessDeniedError, ConflictError, CoordinationError, DeployTransitionError
from zkdeploy.model import ABORTED, DONE, FAILED, HALTED, PENDING, ROLLED_BACK, DeployEntry, Mark, Pin
from zkdeploy.policy.discovery import answers
from zkdeploy.policy.lifecycle import Actor, can, transition
from zkdeploy.policy.marks import effective
from zkdeploy.policy.progress import explain, is_complete
from zkdeploy.policy.quorum import failure_budget
from zkdeploy.policy.waves import advance

log = logging.getLogger(__name__)

#: whether a pin record is one this agent accepts (its signature verifies against the trusted keys)
PinCheck = Callable[[Pin], bool]

#: attempts at a conditional write that keeps losing races before giving up until the next cycle
RETRIES = 10


def report_failure(store: Store, node: str, name: str, error: str, *, halt: bool = False) -> None:
    """Report ``node``'s failed restart on deploy ``name`` (a record of its own, counted once per
    node); a steward then judges the deploy at once (``judge``).  ``halt``: halt it whatever the
    budget (a scenario's failed check bails out the deploy)."""
    try:
        entry = store.deploy(name)
        if entry is None or not entry.is_open:
            return  # gone, or closed: a failure no longer changes it
        store.report_failure(entry, node, {"error": error, "at": time.time(), "halt": halt})
    except CoordinationError as exc:
        log.error("could not report %s's failure on deploy %s: %s", node, name, exc)
        return
    if store.stewards:
        judge(store, name)


def verdict(entry: DeployEntry, reports: Mapping[str, Mapping[str, Any]],
            fleet: int) -> tuple[tuple[dict[str, Any], ...], str | None]:
    """``entry``'s failures with the nodes' ``reports`` folded in (a node counts once), and why the
    deploy must stop (None: within its failure budget, a share of the ``fleet``)."""
    known = {f.get("node") for f in entry.failures}
    new = [reports[n] for n in sorted(reports, key=lambda n: (float(reports[n].get("at") or 0), n))
           if n not in known]
    failures = (*entry.failures, *({"node": r["node"], "error": str(r.get("error", "")),
                                    "at": float(r.get("at") or 0)} for r in new))
    halting = [r for r in new if r.get("halt")]
    if halting:
        return failures, f"a scenario check failed on {halting[0]['node']}"
    if len(failures) > failure_budget(entry.max_failures, fleet):
        return failures, f"{len(failures)} node(s) failed (max_failures {entry.max_failures})"
    return failures, None


def _fleet(store: Store, service: str) -> int:
    """The size the failure budget is a share of: the service's members, present or not."""
    return len(set(store.member_nodes(service)) | set(store.current_nodes(service)))


def as_judged(store: Store, entry: DeployEntry, reports: Mapping[str, Mapping[str, Any]]) -> DeployEntry:
    """``entry`` as it stands once the nodes' ``reports`` are folded in, without writing it: what an
    agent that may not write it acts on until a steward has (halted, when they put it past its
    budget, so that no new restart starts for it meanwhile)."""
    if not can(entry, entry.state, by=Actor.AGENT) or not set(reports) - {f.get("node") for f in entry.failures}:
        return entry
    failures, why = verdict(entry, reports, _fleet(store, entry.service))
    if why is None or not can(entry, HALTED, by=Actor.AGENT):
        return entry.evolve(failures=failures)
    return transition(entry, HALTED, by=Actor.AGENT, failures=failures,
                      message=f"{why}; last: {failures[-1]['node']}: {failures[-1]['error']} "
                              "(reported by the nodes; a steward records it)")


def judge(store: Store, name: str) -> None:
    """A steward folds the nodes' failure reports into deploy ``name``; past its budget, halts it or
    rolls it back.

    ``on_failure: rollback`` closes the deploy, aborts the open deploys of the
    same request (they depend on it) and queues a rollback deploy to the
    version it replaced, all in one transaction.  ``pause`` halts it until an
    operator resumes or aborts it.
    """
    try:
        _judge(store, name)
    except RetryError:
        log.error("could not record the failures on deploy %s: it kept changing under %d attempts", name, RETRIES)
    except DeployTransitionError as exc:  # the entry holds what the table does not expect: say so, go on
        log.error("could not record the failures on deploy %s: %s", name, exc)
    except CoordinationError as exc:
        log.error("could not record the failures on deploy %s: %s", name, exc)


@retry(retry=retry_if_exception_type(ConflictError), stop=stop_after_attempt(RETRIES),
       wait=wait_random(0, 0.2))
def _judge(store: Store, name: str) -> None:
    """One conditional attempt; ConflictError when another steward changed the entry first."""
    entry = store.deploy(name)
    if entry is None or not can(entry, entry.state, by=Actor.AGENT):
        return  # gone, or closed: a failure no longer changes it
    reports = store.failure_reports(entry, skip={str(f.get("node")) for f in entry.failures})
    if not reports:
        return  # recorded already: the budget counts nodes, not events
    failures, why = verdict(entry, reports, _fleet(store, entry.service))
    last = f"last: {failures[-1]['node']}: {failures[-1]['error']}"
    halt = why is not None and why.startswith("a scenario check")
    previous = entry.previous if entry.on_failure == "rollback" and entry.previous != entry.version else None
    summary = why or ""
    if why is not None and not halt and previous:
        try:
            _roll_back(store, str(failures[-1]["node"]), transition(
                entry, ROLLED_BACK, by=Actor.AGENT, failures=failures,
                message=f"{why}; rolling back to {previous}; {last}"), previous)
            return
        except AccessDeniedError:  # ACL roles: only operators queue deploys; the rollback is theirs
            summary += (f"; on_failure rollback: an operator must queue it (zkdeploy rollback {entry.service}): "
                        "only operators queue deploys under ACL roles")
    if why is not None:
        updated = transition(entry, HALTED, by=Actor.AGENT, failures=failures, message=f"{summary}; {last}")
    else:
        updated = transition(entry, entry.state, by=Actor.AGENT, failures=failures, message=entry.message)
    store.update_deploy(updated)  # the halt first: a refused or failed mark must not keep the deploy going
    if why is not None and entry.on_failure == "mark_bad":  # the service's policy: a failed gate marks it bad
        _mark_bad(store, str(failures[-1]["node"]), entry, summary)


def _mark_bad(store: Store, node: str, entry: DeployEntry, summary: str) -> None:
    """Append a bad mark of the entry's release unless its latest mark already says bad."""
    latest = effective(store.marks(entry.service).values()).get(entry.version)
    if latest is not None and latest.mark == "bad":
        return
    try:
        store.add_mark(Mark(service=entry.service, version=entry.version, mark="bad", by=f"zkdeploy on {node}",
                            at=time.time(), why=f"deploy {entry.name}: {summary}"))
        log.error("%s@%s marked bad (on_failure: mark_bad): %s", entry.service, entry.version, summary)
    except CoordinationError as exc:
        log.error("could not mark %s@%s bad: %s", entry.service, entry.version, exc)


def _roll_back(store: Store, node: str, failed: DeployEntry, previous: str) -> None:
    rollback = DeployEntry(service=failed.service, version=previous, group=failed.group,
                           requested_by=f"zkdeploy on {node}", created=time.time(),
                           max_failures=failed.max_failures, previous=failed.version, on_failure="pause",
                           progress_deadline=failed.progress_deadline, kind="rollback",
                           message=f"rollback of {failed.name}")
    dependants = [transition(d, ABORTED, by=Actor.AGENT, message=f"aborted: {failed.name} failed")
                  for d in store.deploys()
                  if d.group == failed.group and d.name > failed.name and can(d, ABORTED, by=Actor.AGENT)]
    name = store.replace_with_rollback(failed, rollback, dependants)
    log.error("deploy %s failed; queued rollback %s to %s", failed.name, name, previous)


def advance_waves(store: Store, head: DeployEntry, mark: Mark | None, trusted: PinCheck | None = None) -> str:
    """Move ``head``'s waves one step on when they may (zkdeploy.policy.waves.advance); returns what
    the next step waits for.  A conditional write: the loser of a race re-reads next cycle."""
    entry = store.deploy(head.name)
    if entry is None or entry.state != PENDING or not entry.waves:
        return ""
    release = store.release(entry.service, entry.version)
    labels = {n: dict(r.labels) for n, r in store.nodes().items()}
    failed = {f["node"] for f in entry.failures}
    moved, why = advance(entry, store.current(entry.service), labels, release.staged_at if release else 0.0,
                         mark.mark if mark else None, excused=failed | _pinned_elsewhere(store, entry, trusted))
    if moved is not None:
        try:
            store.update_deploy(transition(moved, PENDING, by=Actor.AGENT, message=why))
            log.info("deploy %s of %s@%s: %s", entry.name, entry.service, entry.version, why)
        except ConflictError:
            pass
    return why


def _pinned_elsewhere(store: Store, entry: DeployEntry, trusted: PinCheck | None) -> set[str]:
    """Nodes pinned to another release of the entry's service: a deploy does not wait for them.
    With ``trusted`` (an agent that verifies signed controls), only pins it accepts count: a forged
    pin that its node ignores must not let a deploy stop waiting for that node either."""
    return {p.node for p in store.pins() if p.service == entry.service and p.version != entry.version
            and p.active(time.time()) and (trusted is None or trusted(p))}


def maybe_complete(store: Store, head: DeployEntry, trusted: PinCheck | None = None) -> None:
    """Mark the head done when every present node of its service is online at its version.

    Nodes whose restart failed within the failure budget keep the previous
    release and are not waited for; the deploy's message names them.  An entry
    that cannot become done (only a pending one can) is left alone.
    """
    if not can(head, DONE, by=Actor.AGENT):
        return
    if head.waves and (head.wave < len(head.waves) - 1 or len(head.wave_log) < len(head.waves)
                       or not head.wave_log[-1].get("verified")):
        return  # with waves, done once the last wave is verified
    if store.slot_count(head.service) or store.queue_length(head.service):
        return  # restarts under way or queued: not done, and no need to read every entry to know it
    entries = store.current(head.service)
    failed = {f["node"] for f in head.failures}
    # a deploy of discovered nodes (--select) waits for those only: the others do not restart for it
    unselected = set(entries) - set(head.nodes) if head.nodes else set()
    if store.slot_count(head.service) or not is_complete(
            entries, head.version, excused=failed | _pinned_elsewhere(store, head, trusted) | unselected):
        return
    left = sorted(failed & set(entries))
    message = (f"done; {len(left)} node(s) failed within the failure budget and run the previous "
               f"release: {', '.join(left)}") if left else head.message
    if head.nodes:
        seen = answers(head.nodes, head.version, entries, failed)
        message = (f"done on {len(seen.answered)} of {len(head.nodes)} discovered node(s)"
                   + (f"; no response from: {', '.join(seen.no_response)}" if seen.no_response else "")
                   + (f"; unexpected: {', '.join(seen.unexpected)}" if seen.unexpected else "")
                   + (f"; {message}" if left else ""))
    try:
        store.update_deploy(transition(head, DONE, by=Actor.AGENT, message=message))
        log.info("deploy %s of %s@%s complete on %d node(s)", head.name, head.service, head.version, len(entries))
    except ConflictError:
        pass  # another agent completed it first (or it changed): the next cycle sees


def watch_progress(store: Store, head: DeployEntry, quorum: int | str | None) -> None:
    """Record on the deploy when no node made progress for its progress deadline, and why; clear it after.

    Only a pending deploy stalls (the stall bookkeeping is the table's pending → pending move,
    the only move to pending an agent makes); any other entry is left alone.
    Progress is a node going down or coming back (the service's availability epoch, one read); a
    stall is confirmed, and explained, from every entry of the service, read only then.
    """
    if not can(head, PENDING, by=Actor.AGENT):
        return
    last = max(head.created, store.last_change(head.service) or 0.0)
    stalled = time.time() - last > head.progress_deadline
    if stalled == (head.stalled_since is not None):
        return
    entries = store.current(head.service) if stalled else {}
    if entries:  # an entry that changed state without changing availability (restarting -> failed)
        last = max([last] + [e.since for e in entries.values()])
        stalled = time.time() - last > head.progress_deadline
        if stalled == (head.stalled_since is not None):
            return
    message = ""
    if stalled:
        why = explain(head.evolve(stalled_since=None), entries, quorum, store.slots(head.service),
                      store.queue(head.service), members=set(store.member_nodes(head.service)) | set(entries))
        failing = sorted(n for n, e in entries.items() if e.state == FAILED)
        message = (f"stalled: no progress for {int(time.time() - last)}s: {why}"
                   + (f"; failing health checks: {', '.join(failing)}" if failing else ""))
    try:
        store.update_deploy(transition(head, PENDING, by=Actor.AGENT, stalled_since=last if stalled else None,
                                       message=message))
        if stalled:
            log.warning("deploy %s %s", head.name, message)
    except ConflictError:
        pass  # changed meanwhile: judged again at the next look


def seal_refusal(store: Store, entry: DeployEntry, known: dict[str, str]) -> str | None:
    """Why ``entry`` must not be acted on, or None: what it asks for is not what was queued.

    An entry's seal (``seals/<seal>``, made with it in one transaction) holds the digest of its
    spec: service, version, steps, waves, nodes and the rest that agents never change
    (``DeployEntry.spec_digest``).  Agents may write an entry's progress, and ZooKeeper cannot
    limit a write to some fields, so an agent credential could rewrite the rest (another version,
    commands for every host to run): the digest says so.  Under ACL roles an entry without a seal
    is refused too (without them, an entry queued before seals is acted on).  ``known`` caches the
    digests read (a seal never changes)."""
    if not entry.seal:
        if store.guarded:
            return "it has no seal: under ACL roles only an entry queued with its seal is acted on"
        return None
    digest = known.get(entry.seal)
    if digest is None:
        digest = store.seal_digest(entry.seal)
        if digest is None:
            return f"its seal {entry.seal} does not exist"
        known[entry.seal] = digest
    if digest != entry.spec_digest():
        return ("what it asks for (service, version, steps, waves, nodes...) is not what was queued: "
                "the entry was rewritten after it was queued")
    return None


def refuse(store: Store, entry: DeployEntry, reason: str) -> DeployEntry:
    """Halt a pending ``entry`` that must not be acted on, saying why (a steward writes it); the
    entry as it now stands (halted here even when the write failed or this agent may not write it,
    so that nothing acts on it this cycle).  An entry not
    pending is not acted on anyway: it is left as it is, and not logged again every cycle."""
    if entry.state != PENDING:
        return entry
    try:
        halted = transition(entry, HALTED, by=Actor.AGENT, message=f"refused: {reason}")
    except DeployTransitionError:
        return entry
    if not store.stewards:
        return halted  # a steward records the refusal: this agent only does not act on it
    log.error("deploy %s (%s@%s) refused: %s", entry.name, entry.service, entry.version, reason)
    try:
        return store.update_deploy(halted)
    except CoordinationError as exc:
        log.warning("deploy %s: could not record the refusal: %s", entry.name, exc)
        return halted

