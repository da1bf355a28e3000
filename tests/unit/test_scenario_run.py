"""Deploys as tested scenarios on real agents over the in-memory store: checked steps, and a bail-out."""

from __future__ import annotations

import time
from pathlib import Path

from zkdeploy.config.scenario import Scenario
from zkdeploy.model import DONE, FAILED, HALTED, ONLINE
from zkdeploy.testing.simfleet import SimFleet

SCENARIO = Scenario.model_validate({
    "scenario": "db-2", "deploy": "db@2",
    "steps": [
        {"name": "block", "do": "lb_block", "check": "traffic_blocked"},
        {"name": "install", "do": "install", "check": "version_answers", "url": "http://127.0.0.1:1/version"},
        {"name": "load", "do": "command", "command": "true", "check": "command", "check_command": "true"},
        {"name": "unblock", "do": "lb_unblock", "check": "traffic_flows"},
    ]})
STEPS = tuple(step.model_dump(exclude_none=True) for step in SCENARIO.steps)


def make_fleet() -> SimFleet:
    fleet = SimFleet(["n1", "n2", "n3", "n4"], {"services": {"db": {"quorum": 2, "start": "run db"}}})
    fleet.stage("db", "1", at=1.0)
    for node in fleet.agents:
        fleet.install(node, "db", "1")
    fleet.start_all()
    fleet.rounds(1)
    fleet.stage("db", "2", at=2.0)
    return fleet


def checks(fleet: SimFleet, node: str) -> list[str]:
    return [step.split(":", 1)[1] for n, _, step, _ in fleet.world.steps if n == node and step.startswith("check:")]


def test_every_host_runs_every_step_and_its_check_in_order() -> None:
    fleet = make_fleet()
    try:
        name = fleet.deploy(("db", "2"), steps=STEPS)[0]
        for _ in range(10):
            fleet.rounds(1)
        assert fleet.operator.deploy(name).state == DONE
        assert set(fleet.versions("db").values()) == {"2"}
        for node in fleet.agents:
            assert checks(fleet, node) == ["block", "install", "load", "unblock"]
        fleet.rounds(3)  # a second look changes nothing on hosts that are done
        assert all(checks(fleet, node) == ["block", "install", "load", "unblock"] for node in fleet.agents)
    finally:
        fleet.close()


def test_a_failed_check_holds_the_host_before_its_service_is_touched_and_halts_the_deploy() -> None:
    fleet = make_fleet()
    try:
        fleet.world.failing_checks.add(("n2", "block"))  # n2's balancer never shows it blocked
        name = fleet.deploy(("db", "2"), steps=STEPS)[0]
        for _ in range(10):
            fleet.rounds(1)
            for node in fleet.agents:
                fleet.monitor(node)
        entry = fleet.operator.deploy(name)
        assert entry is not None and entry.state == HALTED and "scenario check failed" in entry.message
        assert ("n2", "db", "stop", "1") not in fleet.world.steps  # bailed out before its service was touched
        assert fleet.versions("db")["n2"] == "1"
        assert checks(fleet, "n2") == ["block"]
        n2 = fleet.operator.current("db")["n2"]
        assert n2.state == FAILED and n2.detail.startswith("held:")  # keeps counting against the quorum
        assert "n2" not in fleet.online("db")
    finally:
        fleet.close()


def test_a_held_host_stays_held_across_an_agent_restart() -> None:
    """The hold is the operator's to lift (an undo or the next restart): a restarted agent (a crash,
    an upgrade) neither undoes the kept change set nor puts the host back online behind its back."""
    fleet = make_fleet()
    try:
        fleet.world.failing_checks.add(("n2", "block"))
        name = fleet.deploy(("db", "2"), steps=STEPS)[0]
        for _ in range(10):
            fleet.rounds(1)
        assert fleet.operator.current("db")["n2"].detail.startswith("held:")
        held_detail = fleet.operator.current("db")["n2"].detail
        fleet.crash("n2")
        fleet.expire_dead_sessions()
        fleet.world.failing_checks.clear()  # whatever it answers now, it is held
        fleet.start("n2")
        for _ in range(5):
            fleet.rounds(1)
            for node in fleet.agents:
                fleet.monitor(node)
        n2 = fleet.operator.current("db")["n2"]
        assert n2.state == FAILED and n2.detail == held_detail, n2
        assert "n2" not in fleet.online("db")
        assert fleet.operator.deploy(name).state == HALTED

        # the operator's undo of the kept change set lifts it
        fleet.operator.request_undo("n2", {"last": 1, "since": None, "state": "pending", "by": "test"})
        agent = fleet.agents["n2"].agent
        assert agent is not None and agent.reports is not None
        agent.reports.serve_undo_requests()
        fleet.monitor("n2")
        assert fleet.operator.current("db")["n2"].state == ONLINE
        assert not (Path(agent.config.data_dir) / "state" / "held" / "db.json").exists()
    finally:
        fleet.close()


def test_a_scenario_plan_is_answered_by_the_hosts_it_names_with_its_steps_and_changes_nothing() -> None:
    fleet = make_fleet()
    try:
        steps = [dict(step) for step in STEPS]
        name = fleet.operator.request_plan({"targets": [{"service": "db", "version": "2", "steps": steps}],
                                            "nodes": ["n1", "n3"], "created": time.time()})
        bad = fleet.operator.request_plan({"targets": [{"service": "db", "version": "2",
                                                        "steps": [{"name": "x", "do": "rm -rf /"}]}],
                                           "created": time.time()})
        done = list(fleet.world.steps)
        for node in fleet.agents:
            agent = fleet.agents[node].agent
            assert agent is not None and agent.reports is not None
            agent.reports.answer_plans()
        answers = fleet.operator.plan_answers(name)
        assert sorted(answers) == ["n1", "n3"]
        actions = [a["description"] for a in answers["n1"]["services"][0]["actions"]]
        assert any("stop db 1" in a for a in actions) and actions[-1] == "step load"  # the command step
        assert fleet.operator.plan_answers(bad) == {}  # a step that is not a known action: no answer
        assert fleet.world.steps == done and set(fleet.versions("db").values()) == {"1"}
    finally:
        fleet.close()
