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
from typing import Any

from zkdeploy.coordination import Store
from zkdeploy.demo.fleet import LocalFleet
from zkdeploy.demo.observer import Observer, Sample
from zkdeploy.errors import ZkdeployError
from zkdeploy.journal import Journal
from zkdeploy.model import DONE, HALTED, ONLINE
from zkdeploy.policy.quorum import required_online
from zkdeploy.testing.chaos.registrations import Registrations
from zkdeploy.testing.chaos.result import FaultRecord, RunResult, Violation
from zkdeploy.testing.chaos.scenario import NEW, OLD


def grace_windows(samples: list[Sample], faults: list[FaultRecord], service: str,
                  hosts: list[str]) -> dict[str, list[tuple[float, float]]]:
    """Per host, the intervals during which its ``service`` counts as down through no action of
    zkdeploy: from the fault until the first sample, at or after the agent was restarted or
    continued, in which the service answers again (open-ended if it never does)."""
    out: dict[str, list[tuple[float, float]]] = {h: [] for h in hosts}
    for f in faults:
        if not f.host_fault or f.target not in out:
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


def check_order(samples: list[Sample], faults: list[FaultRecord], regs: Registrations, fleet: LocalFleet,
                db_finished: float | None, result: RunResult) -> None:
    """No web node restarted (stopped answering 1 outside a fault of its own host) before every
    reachable db node answered 2.  A db node is unreachable when its host was under a fault
    (from the signal until it was registered again) at some moment between the db deploy's
    completion and that web restart."""
    hosts = [h.name for h in fleet.hosts]
    web_grace = grace_windows(samples, faults, "web", hosts)
    absent: dict[str, list[tuple[float, float]]] = {h: [] for h in hosts}
    for f in faults:
        if f.host_fault and f.target in absent:
            back = regs.back_at(f.target, f)
            absent[f.target].append((f.started, back if back is not None else float("inf")))
    db_v2: dict[str, float] = {}
    for s in samples:
        for h in hosts:
            if h not in db_v2 and s.answers.get(("db", h)) == NEW:
                db_v2[h] = s.at
    problems = []
    for w in hosts:
        t_w = next((s.at for s in samples if s.answers.get(("web", w)) != OLD
                    and not _within(web_grace[w], s.at)), None)
        if t_w is None:
            continue
        since = min(db_finished, t_w) if db_finished is not None else t_w
        for d in hosts:
            if d in db_v2 and db_v2[d] <= t_w:
                continue
            if any(a <= t_w and b >= since for a, b in absent[d]):
                continue  # unreachable when db completed: skipped, converges when it returns
            now = next((s.answers.get(("db", d)) for s in samples if s.at >= t_w), None)
            problems.append(f"web on {w} changed at +{t_w - result.t0:.2f}s while db on {d} answered {now!r}")
    if problems:
        result.violations.append(Violation("order", f"{problems[0]} ({len(problems)} case(s))"))


def most_popular(versions: list[str | None]) -> str | None:
    counted = Counter(v for v in versions if v)
    if not counted:
        return None
    top = max(counted.values())
    return max(v for v, c in counted.items() if c == top)


def check_final(observer: Observer, store: Store, fleet: LocalFleet, faults: list[FaultRecord],
                expected: dict[str, str], deploys: dict[str, Any], fail_health: bool,
                result: RunResult) -> None:
    """Liveness/convergence: every node ends where it should, as probed and as published."""
    hosts = [h.name for h in fleet.hosts]
    for svc in fleet.services:
        final = observer.final(svc.name)
        wrong = {h: v for h, v in final.items() if v != expected[svc.name]}
        if wrong:
            result.violations.append(Violation(
                "liveness", f"{svc.name} should end at {expected[svc.name]} everywhere; probed: "
                            + ", ".join(f"{h}={v}" for h, v in sorted(wrong.items()))))
        try:
            entries = store.current(svc.name)
        except ZkdeployError as exc:
            result.violations.append(Violation("liveness", f"cannot read /current/{svc.name}: {exc}"))
            continue
        missing = sorted(set(hosts) - set(entries))
        off = {n: f"{e.version}/{e.state}" for n, e in entries.items()
               if e.version != expected[svc.name] or e.state != ONLINE}
        if missing or off:
            result.violations.append(Violation(
                "liveness", f"/current/{svc.name}: " + ", ".join(
                    [f"{n} absent" for n in missing] + [f"{n}={v}" for n, v in sorted(off.items())])))
        # a node that was down and came back runs the most popular version
        for h in sorted({f.target for f in faults if f.host_fault}):
            others = most_popular([v for n, v in final.items() if n != h])
            if final.get(h) != others:
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
    db, web = deploys.get("db"), deploys.get("web")
    if fail_health:
        if db is None or db.state != HALTED:
            result.violations.append(Violation("liveness", f"db@{NEW} (failing health) should be halted, "
                                               f"is {db.state if db else 'gone'}"))
        if web is not None and web.state == DONE:
            result.violations.append(Violation("order", "web@2 completed although db@2 halted"))
    else:
        for name, entry in (("db", db), ("web", web)):
            if entry is None or entry.state != DONE:
                result.violations.append(Violation(
                    "liveness", f"{name}@{NEW} ended {entry.state if entry else 'gone'}"
                                f"{': ' + entry.message if entry and entry.message else ''}"))


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

