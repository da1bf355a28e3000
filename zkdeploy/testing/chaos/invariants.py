"""The judge: a chaos run's evidence checked against the invariants of DESIGN.md.

The evidence is the observer's samples (what every service answered over HTTP, every 50 ms),
the faults as they happened, the ``/nodes`` registrations seen from outside, what ZooKeeper
holds at the end, and each host's journal.  Each ``check_*`` function appends the
:class:`~zkdeploy.testing.chaos.result.Violation` s it finds to the run's result (and its
figures, such as the smallest quorum margin); none of them changes anything it reads.
docs/chaos.md says how each invariant is judged.
"""

from __future__ import annotations

import os
from collections import Counter

from zkdeploy.coordination import Store
from zkdeploy.demo.fleet import LocalFleet
from zkdeploy.demo.observer import Observer, Sample
from zkdeploy.errors import ZkdeployError
from zkdeploy.journal import Journal
from zkdeploy.model import ABORTED, DONE, HALTED, ONLINE, DeployEntry
from zkdeploy.policy.quorum import required_online
from zkdeploy.testing.chaos.locks import LocksPoll
from zkdeploy.testing.chaos.plan import HEALTH_KINDS, OP_ABORT, OP_ROLLBACK, OP_UNDO, RESTART_FAILING
from zkdeploy.testing.chaos.registrations import Registrations
from zkdeploy.testing.chaos.result import FaultRecord, RunResult, Violation
from zkdeploy.testing.chaos.scenario import FAILING_SERVICE, NEW, OLD, Scenario


def grace_windows(samples: list[Sample], faults: list[FaultRecord], service: str,
                  hosts: list[str]) -> dict[str, list[tuple[float, float]]]:
    """Per host, the intervals during which its ``service`` counts as down through no action of
    zkdeploy: from the fault until the first sample, at or after the agent was restarted or
    continued (or the health endpoint mended), in which the service answers again (open-ended
    if it never does).  The faults: those on the host, and those that broke this service's
    health endpoint there (for the agents, whose quorum counts healthy nodes, it is down)."""
    out: dict[str, list[tuple[float, float]]] = {h: [] for h in hosts}
    for f in faults:
        if f.target not in out or not (f.host_fault or (f.kind in HEALTH_KINDS and f.service == service)):
            continue
        end = float("inf")
        if f.resumed is not None:
            for s in samples:
                if s.at >= f.resumed and s.answers.get((service, f.target)):
                    end = s.at
                    break
        out[f.target].append((f.started, end))
    return out


def _within(windows: list[tuple[float, float]], t: float) -> bool:
    return any(a <= t <= b for a, b in windows)


def check_safety(samples: list[Sample], faults: list[FaultRecord], fleet: LocalFleet,
                 result: RunResult) -> None:
    """At every sample: answering >= quorum - (faulted nodes in their grace that do not answer)."""
    hosts = [h.name for h in fleet.hosts]
    for svc in fleet.services:
        quorum = required_online(svc.quorum, len(hosts))
        grace = grace_windows(samples, faults, svc.name, hosts)
        worst: tuple[int, Sample | None, int, int] = (10**9, None, 0, 0)
        bad = 0
        first_bad: tuple[Sample, int, int] | None = None
        max_down = 0
        for s in samples:
            answering = sum(1 for h in hosts if s.answers.get((svc.name, h)))
            excused = sum(1 for h in hosts if not s.answers.get((svc.name, h)) and _within(grace[h], s.at))
            margin = answering - (quorum - excused)
            max_down = max(max_down, len(hosts) - answering)
            if margin < worst[0]:
                worst = (margin, s, answering, excused)
            if margin < 0:
                bad += 1
                if first_bad is None:
                    first_bad = (s, answering, excused)
        result.min_margin[svc.name] = worst[0] if worst[1] is not None else 0
        result.max_down[svc.name] = max_down
        if first_bad is not None:
            s, answering, excused = first_bad
            down = sorted(h for h in hosts if not s.answers.get((svc.name, h)))
            result.violations.append(Violation(
                "safety", f"{svc.name} at +{s.at - result.t0:.2f}s: {answering} answering, quorum {quorum}, "
                          f"{excused} down by fault (down: {', '.join(down)}; {bad} sample(s) below)"))


def _changes(samples: list[Sample], service: str, node: str, old: str,
             skip: list[tuple[float, float]]) -> float | None:
    """When ``node``'s ``service`` first stopped answering ``old``, outside the ``skip`` windows."""
    return next((s.at for s in samples if s.answers.get((service, node)) != old and not _within(skip, s.at)), None)


def _until_answering(samples: list[Sample], service: str, node: str,
                     windows: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Each operator window on ``node`` stretched until its ``service`` answers again: an undo that
    took the service back past its first release leaves it down, which is the operator's doing, not a
    restart out of dependency order, until the node next comes up (for good, if it never does)."""
    out = []
    for start, end in windows:
        back = next((s.at for s in samples if s.at > end and s.answers.get((service, node)) is not None), None)
        out.append((start, float("inf") if back is None else max(end, back)))
    return out


def check_order(samples: list[Sample], faults: list[FaultRecord], regs: Registrations, fleet: LocalFleet,
                scenario: Scenario, deploys: dict[str, list[DeployEntry]], result: RunResult) -> None:
    """No node of S restarted before every service S depends on was done, operator actions or not.

    A node's *restart* of S is the first sample after the deploy command at which it does not
    answer OLD, outside its host's own recovery grace and outside an operator's undo on that node.
    At that moment (1) every node of each dependency D must already have answered NEW at some
    sample, unless it was unreachable (its host under a fault, from the signal until registered
    again) at some moment between D's completion and that restart; and (2) the deploy of D queued
    with S's must be ``done``, finished no later.  Also, a deploy of S completed only after the
    deploys of what S depends on completed."""
    hosts = [h.name for h in fleet.hosts]
    absent: dict[str, list[tuple[float, float]]] = {h: [] for h in hosts}
    for f in faults:
        if f.host_fault and f.target in absent:
            back = regs.back_at(f.target, f)
            absent[f.target].append((f.started, back if back is not None else float("inf")))
    undone = operator_windows(faults, OP_UNDO)
    problems = []
    for service in scenario.names:
        grace = grace_windows(samples, faults, service, hosts)
        for dep in scenario.depends_on(service):
            dep_entry = _first(deploys, dep)
            finished = dep_entry.finished if dep_entry is not None and dep_entry.state == DONE else None
            answered_new: dict[str, float] = {}
            for s in samples:
                for h in hosts:
                    if h not in answered_new and s.answers.get((dep, h)) == NEW:
                        answered_new[h] = s.at
            for w in hosts:
                t_w = _changes(samples, service, w, OLD, grace[w] + _until_answering(samples, service, w,
                                                                                     undone.get(w, [])))
                if t_w is None:
                    continue
                if finished is None or finished > t_w:
                    state = dep_entry.state if dep_entry is not None else "missing"
                    problems.append(f"{service} on {w} changed at +{t_w - result.t0:.2f}s while the deploy of "
                                    f"{dep} was {state}" + (f" (done at +{finished - result.t0:.2f}s)"
                                                            if finished is not None else ""))
                    continue
                since = min(finished, t_w)
                for d in hosts:
                    if d in answered_new and answered_new[d] <= t_w:
                        continue
                    if any(a <= t_w and b >= since for a, b in absent[d]):
                        continue  # unreachable when the dependency completed: skipped, converges later
                    now = next((s.answers.get((dep, d)) for s in samples if s.at >= t_w), None)
                    problems.append(f"{service} on {w} changed at +{t_w - result.t0:.2f}s while {dep} on {d} "
                                    f"answered {now!r}")
        for entry in deploys.get(service, []):
            if entry.state != DONE:
                continue
            for dep in scenario.depends_on(service):
                dep_entry = _first(deploys, dep)
                if dep_entry is None or dep_entry.state != DONE or (dep_entry.finished or 0) > (entry.finished or 0):
                    problems.append(f"{entry.name} ({service}@{entry.version}) completed although {dep}'s deploy "
                                    f"{dep_entry.name if dep_entry else '?'} is "
                                    f"{dep_entry.state if dep_entry else 'missing'}")
    if problems:
        result.violations.append(Violation("order", f"{problems[0]} ({len(problems)} case(s))"))


def _first(deploys: dict[str, list[DeployEntry]], service: str) -> DeployEntry | None:
    """The deploy of ``service`` queued by the run's deploy command (its first entry)."""
    entries = deploys.get(service) or []
    return entries[0] if entries else None


def operator_windows(faults: list[FaultRecord], kind: str,
                     after: float = 2.0) -> dict[str, list[tuple[float, float]]]:
    """Per target, from the operator's command to ``after`` seconds past its end (open-ended when
    it did not end)."""
    out: dict[str, list[tuple[float, float]]] = {}
    for f in faults:
        if f.kind == kind:
            out.setdefault(f.target, []).append((f.started, (f.resumed + after) if f.resumed else float("inf")))
    return out


def most_popular(versions: list[str | None]) -> str | None:
    counted = Counter(v for v in versions if v)
    if not counted:
        return None
    top = max(counted.values())
    return max(v for v, c in counted.items() if c == top)


#: a version expectation of "anything": the node was undone by an operator, who decides
ANY = frozenset({"*"})


def expectations(scenario: Scenario, deploys: dict[str, list[DeployEntry]], faults: list[FaultRecord],
                 hosts: list[str], fail_health: bool) -> dict[tuple[str, str], frozenset[str]]:
    """The versions each (service, node) may end at, from how the run's deploys ended.

    The last deploy of S done: its version, except on the nodes whose restart failed within its
    budget (they keep the previous release).  Halted, aborted or left open: OLD or NEW (a node
    restarted before it stopped keeps NEW).  The failing release of a failing-health run: OLD
    everywhere.  A node an operator undid: anything (ANY)."""
    undone = {f.target for f in faults if f.kind == OP_UNDO}
    out: dict[tuple[str, str], frozenset[str]] = {}
    for service in scenario.names:
        entries = deploys.get(service, [])
        last = entries[-1] if entries else None
        failed = {f["node"] for f in last.failures} if last is not None else set()
        for h in hosts:
            if h in undone:
                out[(service, h)] = ANY
            elif fail_health and service == FAILING_SERVICE:
                out[(service, h)] = frozenset({OLD})
            elif last is not None and last.state == DONE:
                out[(service, h)] = frozenset({last.previous or OLD}) if h in failed else frozenset({last.version})
            else:
                out[(service, h)] = frozenset({OLD, NEW})
    return out


def settled(entries: list[DeployEntry]) -> bool:
    """True when no deploy of the run can move by itself any more: every entry is closed, halted
    (waiting for an operator), or queued behind a halted one."""
    halted_before = False
    for entry in sorted(entries, key=lambda e: e.name):
        if entry.state == HALTED:
            halted_before = True
        elif entry.is_open and not halted_before:
            return False
    return True


def _halt_explained(entry: DeployEntry, faults: list[FaultRecord], fail_health: bool) -> bool:
    if fail_health and entry.service == FAILING_SERVICE and entry.version == NEW:
        return True
    broke = [f for f in faults if f.kind in (*HEALTH_KINDS, RESTART_FAILING) and f.service == entry.service]
    return bool(entry.failures) and all(
        any(f.target == failure["node"] and f.started <= failure.get("at", 0)
            <= (f.resumed or float("inf")) + 15.0 for f in broke) for failure in entry.failures)


def check_final(observer: Observer, store: Store, fleet: LocalFleet, faults: list[FaultRecord],
                expected: dict[tuple[str, str], frozenset[str]], deploys: dict[str, list[DeployEntry]],
                fail_health: bool, result: RunResult) -> None:
    """Liveness/convergence: every deploy that was not aborted or halted finished; every node ends
    where it should (``expected``), as probed and as published; no lock node is left."""
    hosts = [h.name for h in fleet.hosts]
    for svc in fleet.services:
        final = observer.final(svc.name)
        wrong = {h: v for h, v in final.items()
                 if expected[(svc.name, h)] is not ANY and v not in expected[(svc.name, h)]}
        if wrong:
            result.violations.append(Violation(
                "liveness", f"{svc.name} should end at " + ", ".join(
                    f"{h}={'/'.join(sorted(expected[(svc.name, h)]))}" for h in sorted(wrong))
                + "; probed: " + ", ".join(f"{h}={v}" for h, v in sorted(wrong.items()))))
        try:
            entries = store.current(svc.name)
            leftover = store.queue(svc.name) + store.slots(svc.name)
        except ZkdeployError as exc:
            result.violations.append(Violation("liveness", f"cannot read /current/{svc.name}: {exc}"))
            continue
        missing = sorted(set(hosts) - set(entries))
        off = {n: f"{e.version}/{e.state} (answers {final.get(n)})" for n, e in entries.items()
               if expected.get((svc.name, n)) is not ANY
               and (e.version != final.get(n) or e.state != ONLINE)}
        if missing or off:
            result.violations.append(Violation(
                "liveness", f"/current/{svc.name}: " + ", ".join(
                    [f"{n} absent" for n in missing] + [f"{n}={v}" for n, v in sorted(off.items())])))
        if leftover:
            result.violations.append(Violation(
                "locks", f"{svc.name}: queue/slot nodes left after the run settled: {', '.join(leftover)}"))
        # a node that was down and came back runs the most popular version (when a deploy completed
        # last, that is its version, so this only names the convergence failure as such)
        run_entries = deploys.get(svc.name, [])
        if run_entries and run_entries[-1].state == DONE:
            for h in sorted({f.target for f in faults if f.host_fault}):
                if expected.get((svc.name, h)) is ANY:
                    continue
                others = most_popular([v for n, v in final.items() if n != h])
                if final.get(h) != others and h not in {f["node"] for f in run_entries[-1].failures}:
                    result.violations.append(Violation(
                        "convergence", f"{svc.name} on {h} (faulted) answers {final.get(h)!r}, "
                                       f"most popular elsewhere {others!r}"))
    try:
        stale = registered_now(store, fleet)
    except ZkdeployError as exc:
        stale = [f"? ({exc})"]
    if stale:
        result.violations.append(Violation(
            "liveness", "agents not registered (again) with their own session: " + ", ".join(stale)))
    everything = [e for entries in deploys.values() for e in entries]
    aborted_by_operator = any(f.kind in (OP_ABORT, OP_ROLLBACK) for f in faults)
    halted_before = False
    for entry in sorted(everything, key=lambda e: e.name):
        what = f"{entry.name} ({entry.service}@{entry.version})"
        if entry.state == HALTED:
            halted_before = True
            if not _halt_explained(entry, faults, fail_health):
                result.violations.append(Violation(
                    "liveness", f"{what} halted: {entry.message or 'no message'}"))
        elif entry.is_open and not halted_before:
            result.violations.append(Violation(
                "liveness", f"{what} did not finish after the faults stopped: {entry.state}"
                            f"{': ' + entry.message if entry.message else ''}"))
        elif entry.state == ABORTED and not aborted_by_operator:
            result.violations.append(Violation("liveness", f"{what} aborted without an operator: {entry.message}"))
        elif entry.state == DONE and fail_health and entry.service == FAILING_SERVICE and entry.version == NEW:
            result.violations.append(Violation("liveness", f"{what}, whose health check fails, completed"))


def check_failed_releases(samples: list[Sample], deploys: dict[str, list[DeployEntry]], fleet: LocalFleet,
                          fail_health: bool, result: RunResult) -> None:
    """No node runs a release that failed its health check on it after it rolled back.

    A release failed on a node when a deploy entry records the node's failure (at a time), or,
    in a failing-health run, for the failing release on every node that ran it.  After the node
    answered something else again (it rolled back), it must not answer that release again
    (unless a deploy of that release was queued after the failure)."""
    hosts = [h.name for h in fleet.hosts]
    failed: list[tuple[str, str, str, float]] = []  # (service, version, node, since)
    everything = [e for entries in deploys.values() for e in entries]
    for entry in everything:
        for failure in entry.failures:
            failed.append((entry.service, entry.version, failure["node"], float(failure.get("at", 0))))
    if fail_health:
        for h in hosts:
            first = next((s.at for s in samples if s.answers.get((FAILING_SERVICE, h)) == NEW), None)
            if first is not None:
                failed.append((FAILING_SERVICE, NEW, h, first))
    problems = []
    for service, version, node, since in failed:
        requeued = any(e.service == service and e.version == version and e.created > since for e in everything)
        if requeued:
            continue
        back = next((s.at for s in samples if s.at >= since
                     and s.answers.get((service, node)) not in (None, version)), None)
        if back is None:
            continue
        again = next((s.at for s in samples if s.at > back and s.answers.get((service, node)) == version), None)
        if again is not None:
            problems.append(f"{service}@{version} on {node}: failed (+{since - result.t0:.2f}s), rolled back "
                            f"(+{back - result.t0:.2f}s), runs it again at +{again - result.t0:.2f}s")
    if problems:
        result.violations.append(Violation("failed-release", f"{problems[0]} ({len(problems)} case(s))"))


#: a queue or slot node may outlive its step this long (a cycle, a publish, a retry) before it counts
LOCK_LIMIT = 5.0


def check_locks(polls: list[LocksPoll], faults: list[FaultRecord], hosts: list[str], session_timeout: float,
                result: RunResult) -> None:
    """No queue or slot node outlives the step that made it.

    From the polls of the lock tree: a node holding a slot of S must be ``restarting`` in
    /current/S; a node in S's restart queue must be ``waiting`` there, and in it once.  A lock
    node that breaks this for more than :data:`LOCK_LIMIT` seconds in a row is a violation,
    except while its host is under a fault (and a session timeout after it: a killed agent's
    nodes live until its session expires) or while ZooKeeper servers are down (and a session
    timeout after)."""
    slack = session_timeout + 2.0
    excused: dict[str, list[tuple[float, float]]] = {h: [] for h in hosts}
    fleetwide: list[tuple[float, float]] = []
    for f in faults:
        window = (f.started, (f.resumed if f.resumed is not None else float("inf")) + slack)
        if f.host_fault and f.target in excused:
            excused[f.target].append(window)
        elif f.target.startswith("zk:"):
            fleetwide.append(window)
    streaks: dict[tuple[str, str, str], float] = {}
    reported: set[tuple[str, str, str]] = set()
    problems = []
    for poll in polls:
        bad: set[tuple[str, str, str]] = set()
        for service, queue in poll.queues.items():
            current = poll.current.get(service, {})
            for node in set(queue):
                state, phase = current.get(node, ("absent", "absent"))
                if queue.count(node) > 1:
                    bad.add(("twice in the queue", service, node))
                if phase != "waiting":
                    bad.add((f"queued while {state}/{phase}", service, node))
            for node in poll.slots.get(service, ()):
                state, phase = current.get(node, ("absent", "absent"))
                if state != "restarting":
                    bad.add((f"holding a slot while {state}/{phase}", service, node))
        bad = {k for k in bad if not _within(excused.get(k[2], []), poll.at) and not _within(fleetwide, poll.at)}
        for key in list(streaks):
            if key not in bad:
                del streaks[key]  # the streak is broken: the lock node went, or its step caught up
        for key in bad:
            first = streaks.setdefault(key, poll.at)
            if poll.at - first > LOCK_LIMIT and key not in reported:
                reported.add(key)
                problems.append(f"{key[2]} {key[0]} of {key[1]} for over {LOCK_LIMIT:g}s "
                                f"(from +{first - result.t0:.2f}s)")
    if problems:
        result.violations.append(Violation("locks", f"{problems[0]} ({len(problems)} case(s))"))


def check_agents_alive(fleet: LocalFleet, result: RunResult) -> None:
    """Every agent process the run started last is still running (none exited by itself)."""
    for host in fleet.hosts:
        code = host.process.poll() if host.process is not None else "never started"
        if code is not None:
            try:
                tail = host.log.read_text(errors="replace").strip().splitlines()[-1][:200]
            except (OSError, IndexError):
                tail = ""
            result.violations.append(Violation("agent", f"the agent of {host.name} exited by itself "
                                                        f"(code {code}): {tail}"))


def registered_now(store: Store, fleet: LocalFleet) -> list[str]:
    """Hosts whose running agent is not the one registered in /nodes (not yet back, or stale)."""
    nodes = store.nodes()
    return [h.name for h in fleet.hosts
            if h.name not in nodes or h.process is None or nodes[h.name].pid != h.process.pid]


def check_journals(fleet: LocalFleet, result: RunResult) -> None:
    """No open/in-flight change set; each current/<service> link is what its last done change set
    for that service switched to (journal.blame(link) against os.readlink(link))."""
    for host in fleet.hosts:
        path = host.root / "data" / "state" / "journal.db"
        try:
            journal = Journal.open(path, create=False)
        except ZkdeployError as exc:
            result.violations.append(Violation("journal", f"{host.name}: {exc}"))
            continue
        with journal:
            changes = journal.list_changes()
            for c in changes:
                if c.status in ("open", "undoing"):
                    result.violations.append(Violation(
                        "journal", f"{host.name}: change set {c.id} ({c.description}) left {c.status}"))
                elif c.status in ("failed", "partially-undone"):
                    result.notes.append(f"{host.name}: change set {c.id} ({c.description}) is {c.status}")
            for t in journal.in_flight():
                result.violations.append(Violation(
                    "journal", f"{host.name}: task {t.change_id}.{t.position} ({t.execute.kind}) in flight"))
            for svc in fleet.services:
                link = host.root / "data" / "current" / svc.name
                try:
                    actual = os.readlink(link)
                except FileNotFoundError as exc:
                    if journal.blame(link) is not None:  # a change in effect wrote it: it must be there
                        result.violations.append(Violation("journal", f"{host.name}: {link}: {exc}"))
                    continue  # else every change that wrote it was undone (an operator's undo): consistent
                except OSError as exc:
                    result.violations.append(Violation("journal", f"{host.name}: {link}: {exc}"))
                    continue
                task = journal.blame(link)
                if task is None or task.execute.kind != "symlink_swap":
                    result.violations.append(Violation(
                        "journal", f"{host.name}: no change in effect wrote current/{svc.name} (-> {actual})"))
                    continue
                if task.execute.params.get("target") != actual:
                    result.violations.append(Violation(
                        "journal", f"{host.name}: current/{svc.name} -> {actual}, but change set "
                                   f"{task.change_id} switched it to {task.execute.params.get('target')}"))
                # the newest change set whose swap of this link is in effect: done, or interrupted by a
                # crash and kept by recovery (its tasks done, the set closed as failed with a note)
                last_done = next((c for c in changes if c.status in ("done", "failed")
                                  and c.description.startswith(svc.name + " ")
                                  and any(t.execute.kind == "symlink_swap" and t.status == "done"
                                          and t.execute.params.get("link") == os.path.abspath(link)
                                          for t in c.tasks)), None)
                if last_done is None or last_done.id != task.change_id:
                    result.violations.append(Violation(
                        "journal", f"{host.name}: current/{svc.name} was last switched by change set "
                                   f"{task.change_id}, but the last done change set for {svc.name} is "
                                   f"{last_done.id if last_done else None}"))

