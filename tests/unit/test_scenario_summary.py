"""``zkdeploy scenario run``'s summary, built from what real agents report on the in-memory fleet:
their /current entries and the history records carrying each checked step's result."""

from __future__ import annotations

from tests.unit.test_scenario_run import STEPS, make_fleet
from zkdeploy.cli.scenario_cmd import summarize
from zkdeploy.model import DONE, HALTED
from zkdeploy.testing.simfleet import SimFleet


def _summary(fleet: SimFleet, name: str, before: dict[str, str | None]) -> dict:
    entry = fleet.operator.deploy(name)
    assert entry is not None
    return summarize(entry, STEPS, sorted(fleet.agents), before, fleet.operator.current("db"),
                     [r for r in fleet.operator.history() if r.get("deploy_id") == name])


def _run(fleet: SimFleet) -> tuple[str, dict[str, str | None]]:
    before = {n: e.version for n, e in fleet.operator.current("db").items()}
    name = fleet.deploy(("db", "2"), steps=STEPS)[0]
    for _ in range(10):
        fleet.rounds(1)
    return name, before


def test_green_when_every_host_passed_every_step_and_a_second_run_reports_them_already_done() -> None:
    fleet = make_fleet()
    try:
        name, before = _run(fleet)
        summary = _summary(fleet, name, before)
        assert summary["state"] == DONE and summary["green"]
        assert {r["node"]: r["status"] for r in summary["hosts"]} == dict.fromkeys(fleet.agents, "done")
        assert all(c["status"] == "passed" for r in summary["hosts"] for c in r["steps"])
        again, before = _run(fleet)
        summary = _summary(fleet, again, before)
        assert summary["state"] == DONE and summary["green"]
        assert {r["status"] for r in summary["hosts"]} == {"already done"}
    finally:
        fleet.close()


def test_a_failed_check_is_named_with_what_it_saw_and_the_run_is_not_green() -> None:
    fleet = make_fleet()
    try:
        fleet.world.failing_checks.add(("n3", "unblock"))
        name, before = _run(fleet)
        summary = _summary(fleet, name, before)
        assert summary["state"] == HALTED and not summary["green"]
        n3 = next(r for r in summary["hosts"] if r["node"] == "n3")
        assert n3["status"] == "held" and n3["detail"].startswith("held: scenario check failed")
        assert [c["status"] for c in n3["steps"]] == ["passed", "passed", "passed", "FAILED"]
        assert "traffic_flows failed" in n3["steps"][3]["seen"]
        rest = {r["node"]: r["status"] for r in summary["hosts"] if r["node"] != "n3"}
        assert "not done" in rest.values()  # the deploy halted before every host got its turn
        assert set(summary["no_response"]) == {n for n, s in rest.items() if s == "not done"}
    finally:
        fleet.close()
