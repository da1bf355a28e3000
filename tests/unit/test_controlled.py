"""Controlled deployment on real agents over the in-memory store: waves, release marks and pins."""

from __future__ import annotations

import time

import pytest

from zkdeploy.agent.deploys import advance_waves
from zkdeploy.errors import ConfigError
from zkdeploy.model import ABORTED, DONE, HALTED, Mark, Pin
from zkdeploy.policy.waves import resolve
from zkdeploy.testing.simfleet import SimFleet

LABELS = {"dev1": {"env": "dev"}, "qa1": {"env": "qa"}, "stg1": {"env": "staging"},
          "prod1": {"env": "prod"}, "prod2": {"env": "prod"}, "prod3": {"env": "prod"}, "prod4": {"env": "prod"}}
ETCH = [  # etch's schedule with the hours taken out (the gates are what is tested here)
    {"name": "dev", "select": "env in (dev, int)"},
    {"name": "qa", "select": "env=qa"},
    {"name": "staging", "select": "env=staging"},
    {"name": "prod-half", "select": "env=prod and slice(0%, 50%)"},
    {"name": "rest", "select": "*"},
]
RELEASES = ["0700", "0800", "0900", "1000", "1100"]


def make_fleet(waves: list[dict], **spec: object) -> SimFleet:
    catalog = {"services": {"app": {"quorum": 5, "start": "run app", "waves": waves, **spec}}}
    fleet = SimFleet(sorted(LABELS), catalog, labels=LABELS)
    for i, version in enumerate(RELEASES):
        fleet.stage("app", version, at=1000.0 + i)
    for node in fleet.agents:
        fleet.install(node, "app", "0700")
    fleet.start_all()
    fleet.rounds(1)
    return fleet


def rounds_until(fleet: SimFleet, done, limit: int = 40) -> None:
    for _ in range(limit):
        if done():
            return
        fleet.rounds(1)
    assert done(), "did not get there"


def approve(fleet: SimFleet, name: str, wave: int) -> None:
    entry = fleet.operator.deploy(name)
    assert entry is not None
    log = [dict(x) for x in entry.wave_log] + [{} for _ in range(len(entry.waves) - len(entry.wave_log))]
    log[wave]["approved_by"] = "test"
    fleet.operator.update_deploy(entry.evolve(wave_log=tuple(log)))


def mark(fleet: SimFleet, version: str, how: str) -> None:
    fleet.operator.add_mark(Mark(service="app", version=version, mark=how, by="test", at=time.time(), why="story"))


def versions(fleet: SimFleet) -> dict[str, str | None]:
    return fleet.versions("app")


def test_waves_roll_in_order_and_later_waves_hold() -> None:
    waves = [dict(w) for w in ETCH]
    waves[3]["approval"] = True  # production waits for a person
    fleet = make_fleet(waves)
    try:
        name = fleet.deploy(("app", "0800"), waves=True)[0]
        rounds_until(fleet, lambda: versions(fleet)["stg1"] == "0800")
        fleet.rounds(3)
        v = versions(fleet)
        assert v["dev1"] == v["qa1"] == v["stg1"] == "0800"
        assert {v[p] for p in ("prod1", "prod2", "prod3", "prod4")} == {"0700"}  # waiting for approval
        entry = fleet.operator.deploy(name)
        assert entry is not None and entry.wave == 3 and entry.state != DONE
        approve(fleet, name, 3)
        rounds_until(fleet, lambda: fleet.operator.deploy(name).state == DONE)
        order = [node for node, _, step, _ in fleet.world.steps if step == "stop"]
        assert order.index("dev1") < order.index("qa1") < order.index("stg1") < min(
            order.index(p) for p in ("prod1", "prod2", "prod3", "prod4"))
        assert set(versions(fleet).values()) == {"0800"}
    finally:
        fleet.close()


def test_a_wave_waits_until_its_nodes_stayed_healthy() -> None:
    waves = [{"name": "dev", "select": "env=dev", "min_healthy_time": 3600}, {"name": "rest", "select": "*"}]
    fleet = make_fleet(waves)
    try:
        name = fleet.deploy(("app", "0800"), waves=True)[0]
        fleet.rounds(5)
        assert versions(fleet)["dev1"] == "0800"
        assert [n for n, v in versions(fleet).items() if v == "0800"] == ["dev1"]
        entry = fleet.operator.deploy(name)
        assert entry is not None and entry.wave == 0
        assert "healthy for 3600s on every node" in advance_waves(fleet.operator, entry, None)
    finally:
        fleet.close()


def test_the_seed_story_with_bad_marks() -> None:
    """0800 is bad; dev and qa got it, then 0900 and 1000; the fix is in 1100.  Marking 0800-1000 bad
    sends dev and qa back to 0700 while staging and production hold at 0700; 1100 then flows."""
    waves = [dict(w) for w in ETCH]
    waves[2]["approval"] = True  # staging waits: the bad change is noticed before it gets there
    fleet = make_fleet(waves)
    try:
        for version in ("0800", "0900", "1000"):
            name = fleet.deploy(("app", version), waves=True)[0]
            rounds_until(fleet, lambda version=version: versions(fleet)["qa1"] == version)
            fleet.operator.update_deploy(fleet.operator.deploy(name).evolve(state=ABORTED))
        assert versions(fleet)["dev1"] == versions(fleet)["qa1"] == "1000"
        for version in ("0800", "0900", "1000"):
            mark(fleet, version, "bad")
        rounds_until(fleet, lambda: versions(fleet)["dev1"] == versions(fleet)["qa1"] == "0700")
        assert set(versions(fleet).values()) == {"0700"}
        name = fleet.deploy(("app", "1100"), waves=True)[0]
        rounds_until(fleet, lambda: fleet.operator.deploy(name).wave == 2)
        approve(fleet, name, 2)
        rounds_until(fleet, lambda: fleet.operator.deploy(name).state == DONE)
        assert set(versions(fleet).values()) == {"1100"}
    finally:
        fleet.close()


def test_badfwd_jumps_forward_once_the_fix_passed_its_first_wave() -> None:
    waves = [dict(w) for w in ETCH]
    waves[1]["approval"] = True
    fleet = make_fleet(waves)
    try:
        first = fleet.deploy(("app", "0800"), waves=True)[0]
        rounds_until(fleet, lambda: versions(fleet)["dev1"] == "0800")
        mark(fleet, "0800", "badfwd")  # a step back cannot undo it (a new file)
        rounds_until(fleet, lambda: fleet.operator.deploy(first).state == ABORTED)
        fleet.rounds(2)
        assert versions(fleet)["dev1"] == "0800"  # no newer release passed a first wave yet: it holds
        fix = fleet.deploy(("app", "1100"), waves=True)[0]
        rounds_until(fleet, lambda: fleet.operator.deploy(fix).wave >= 1)  # the dev wave is verified
        assert versions(fleet)["dev1"] == "1100"
        assert versions(fleet)["qa1"] == "0700"  # qa never had 0800; it waits for its wave as usual
    finally:
        fleet.close()


def test_a_failing_gate_in_the_canary_wave_stops_the_rollout_and_marks_the_release_bad() -> None:
    waves = [{"name": "canary", "select": "env=prod", "canary": 1}, {"name": "rest", "select": "*"}]
    fleet = make_fleet(waves, on_failure="mark_bad")
    try:
        fleet.world.bad.add(("app", "0800"))
        name = fleet.deploy(("app", "0800"), waves=True, on_failure="mark_bad")[0]
        rounds_until(fleet, lambda: fleet.operator.deploy(name).state in (HALTED, ABORTED))
        fleet.rounds(2)
        assert set(versions(fleet).values()) == {"0700"}
        tried = [s[0] for s in fleet.world.steps if s[2] == "stop" and s[3] == "0700"]
        assert len(tried) == 1 and tried[0] in ("prod1", "prod2", "prod3", "prod4")  # only the canary tried
        marks = fleet.operator.marks("app")
        assert [(m.version, m.mark) for m in marks.values()] == [("0800", "bad")]
    finally:
        fleet.close()


def test_a_pinned_node_keeps_its_release_through_a_deploy_and_a_mark_and_converges_when_the_pin_lapses() -> None:
    fleet = make_fleet([])
    try:
        fleet.operator.set_pin(Pin(node="prod1", service="app", version="0700", until=time.time() + 3600,
                                   by="test", at=time.time(), why="customer demo"))
        name = fleet.deploy(("app", "0800"))[0]
        rounds_until(fleet, lambda: fleet.operator.deploy(name).state == DONE)
        assert versions(fleet)["prod1"] == "0700" and set(versions(fleet).values()) == {"0700", "0800"}
        mark(fleet, "0700", "bad")
        fleet.rounds(3)
        assert versions(fleet)["prod1"] == "0700"  # the pin wins over the mark
        fleet.operator.set_pin(Pin(node="prod1", service="app", version="0700", until=time.time() - 1,
                                   by="test", at=time.time(), why="expired"))
        rounds_until(fleet, lambda: versions(fleet)["prod1"] == "0800")
    finally:
        fleet.close()


def test_bad_wave_plans_are_refused_with_a_clear_message() -> None:
    labels = {n: dict(v) for n, v in LABELS.items()}
    with pytest.raises(ConfigError, match="overlapping waves: node prod1 is selected by wave a and by wave b"):
        resolve([{"name": "a", "select": "env=prod"}, {"name": "b", "select": "node=prod1"}], labels)
    with pytest.raises(ConfigError, match="wave x: its selector env=nowhere matches no node"):
        resolve([{"name": "x", "select": "env=nowhere"}, {"name": "rest", "select": "*"}], labels)
