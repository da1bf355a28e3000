"""The chaos judge's new checks on made-up evidence: each must flag what it exists to flag, and
stay quiet about the same evidence when it is innocent."""

from __future__ import annotations

from pathlib import Path

from zkdeploy.demo.fleet import LocalFleet
from zkdeploy.demo.observer import Sample
from zkdeploy.model import ABORTED, DONE, HALTED, PENDING, DeployEntry
from zkdeploy.testing.chaos import plan as chaos_plan
from zkdeploy.testing.chaos.invariants import (
    ANY,
    LOCK_LIMIT,
    check_failed_releases,
    check_locks,
    expectations,
    settled,
)
from zkdeploy.testing.chaos.locks import LocksPoll
from zkdeploy.testing.chaos.plan import KILL, OP_UNDO, plan_run
from zkdeploy.testing.chaos.result import FaultRecord, RunResult
from zkdeploy.testing.chaos.scenario import SCENARIOS, services

HOSTS = ["node01", "node02"]


def _fleet(tmp_path: Path) -> LocalFleet:
    return LocalFleet(tmp_path, "127.0.0.1:1", services(), size=2)


def _entry(name: str, service: str, version: str, state: str, **kw: object) -> DeployEntry:
    return DeployEntry(name=name, service=service, version=version, state=state, **kw)  # type: ignore[arg-type]


def _polls(slot_state: str, seconds: float, start: float = 100.0) -> list[LocksPoll]:
    out = []
    t = start
    while t <= start + seconds:
        out.append(LocksPoll(t, {"db": ()}, {"db": ("node01",)},
                             {"db": {"node01": (slot_state, "idle"), "node02": ("online", "idle")}}))
        t += 0.25
    return out


def test_a_slot_held_after_its_restart_ended_is_a_locks_violation():
    result = RunResult(seed=0, fail_health=False, t0=100.0)
    check_locks(_polls("online", LOCK_LIMIT + 2), [], HOSTS, 4.0, result)
    assert [v.invariant for v in result.violations] == ["locks"]
    assert "node01 holding a slot while online/idle of db" in result.violations[0].reason


def test_a_slot_held_while_restarting_or_while_its_host_is_faulted_is_not():
    result = RunResult(seed=0, fail_health=False, t0=100.0)
    check_locks(_polls("restarting", LOCK_LIMIT + 2), [], HOSTS, 4.0, result)
    killed = FaultRecord(KILL, "node01", 99.0, 101.0)
    check_locks(_polls("online", LOCK_LIMIT + 2), [killed], HOSTS, 4.0, result)
    assert result.violations == []


def test_a_ghost_queue_node_is_a_locks_violation():
    polls = [LocksPoll(100.0 + i * 0.25, {"db": ("node01", "node01")}, {"db": ()},
                       {"db": {"node01": ("online", "waiting")}}) for i in range(40)]
    result = RunResult(seed=0, fail_health=False, t0=100.0)
    check_locks(polls, [], HOSTS, 4.0, result)
    assert "twice in the queue" in result.violations[0].reason


def test_running_a_release_again_after_it_failed_and_rolled_back_is_flagged(tmp_path):
    failed = _entry("d-2", "db", "2", HALTED, failures=({"node": "node01", "error": "HTTP 500", "at": 10.0},))
    deploys = {"db": [failed]}

    def samples(versions: list[str | None]) -> list[Sample]:
        return [Sample(10.0 + i, {("db", "node01"): v, ("db", "node02"): "1"}) for i, v in enumerate(versions)]

    result = RunResult(seed=0, fail_health=False, t0=0.0)
    check_failed_releases(samples(["2", None, "1", "1", "2"]), deploys, _fleet(tmp_path), False, result)
    assert [v.invariant for v in result.violations] == ["failed-release"]
    clean = RunResult(seed=0, fail_health=False, t0=0.0)
    check_failed_releases(samples(["2", None, "1", "1", "1"]), deploys, _fleet(tmp_path), False, clean)
    assert clean.violations == []


def test_in_a_failing_health_run_the_failing_release_may_not_come_back_on_a_node(tmp_path):
    result = RunResult(seed=0, fail_health=True, t0=0.0)
    samples = [Sample(float(i), {("db", "node01"): v, ("db", "node02"): "1"})
               for i, v in enumerate(["1", "2", "2", "1", "2"])]
    check_failed_releases(samples, {"db": [_entry("d-2", "db", "2", PENDING)]}, _fleet(tmp_path), True, result)
    assert "db@2 on node01" in result.violations[0].reason


def test_settled_waits_for_open_deploys_unless_a_halted_one_blocks_them():
    assert not settled([_entry("d-2", "db", "2", DONE), _entry("d-3", "web", "2", PENDING)])
    assert settled([_entry("d-2", "db", "2", HALTED), _entry("d-3", "web", "2", PENDING)])
    assert settled([_entry("d-2", "db", "2", ABORTED), _entry("d-3", "web", "2", ABORTED)])


def test_expectations_follow_how_each_deploy_ended():
    scenario = SCENARIOS["basic"]
    deploys = {"db": [_entry("d-2", "db", "2", DONE, previous="1",
                             failures=({"node": "node02", "error": "x", "at": 1.0},))],
               "web": [_entry("d-3", "web", "2", ABORTED)]}
    undo = FaultRecord(OP_UNDO, "node03", 1.0, 2.0)
    got = expectations(scenario, deploys, [undo], [*HOSTS, "node03"], fail_health=False)
    assert got[("db", "node01")] == {"2"}
    assert got[("db", "node02")] == {"1"}          # failed within the budget: keeps the previous release
    assert got[("web", "node01")] == {"1", "2"}    # aborted: either
    assert got[("db", "node03")] is ANY            # undone by an operator
    assert expectations(scenario, deploys, [], HOSTS, fail_health=True)[("db", "node01")] == {"1"}


def test_plans_draw_every_new_kind_and_name_the_scenario():
    drawn = {f.kind for seed in range(1, 60) for f in plan_run(seed).faults}
    assert set(chaos_plan.KINDS) <= drawn
    assert plan_run(3, scenario="chain").scenario == "chain"
    assert SCENARIOS["chain"].names == ["db", "app", "web"]
    assert SCENARIOS["chain"].depends_on("web") == ("app",)
    assert all(isinstance(s.quorum, str) and s.quorum.endswith("%") for s in SCENARIOS["chain"].services())


def test_a_node_whose_health_endpoint_the_run_broke_counts_as_down_by_fault(tmp_path):
    from zkdeploy.testing.chaos.invariants import check_safety
    from zkdeploy.testing.chaos.plan import HEALTH_FLAP

    fleet = LocalFleet(tmp_path, "127.0.0.1:1", services(), size=6)
    hosts = [h.name for h in fleet.hosts]
    # web (67%: 5 of 6) with node05 restarting and node06 restarted again because its /health flaps
    down = {("web", "node05"), ("web", "node06")}
    samples = [Sample(10.0 + i * 0.05, {(s, h): (None if (s, h) in down else "2") for s in ("db", "web")
                                        for h in hosts}) for i in range(20)]
    flap = FaultRecord(HEALTH_FLAP, "node06", 9.0, 12.0, service="web")
    excused = RunResult(seed=0, fail_health=False, t0=0.0)
    check_safety(samples, [flap], fleet, excused)
    assert excused.violations == []
    other_service = RunResult(seed=0, fail_health=False, t0=0.0)
    check_safety(samples, [FaultRecord(HEALTH_FLAP, "node06", 9.0, 12.0, service="db")], fleet, other_service)
    assert [v.invariant for v in other_service.violations] == ["safety"]
