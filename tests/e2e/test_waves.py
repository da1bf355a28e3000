"""Controlled deployment end to end: agents as processes on a real ZooKeeper, a fleet labelled dev,
int, qa, staging and prod, etch's schedule compressed to seconds, the outside HTTP observer.

The waves open in order and only when their gates pass (age since staging, the wave before
verified, an operator's promotion); no node outside an open wave changes version; never fewer than
quorum nodes answer.  Then the seed's story: a release marked bad after dev, int and qa got it
sends them back to the last good release while staging and production hold, and the fix flows.
"""

from __future__ import annotations

import json
import time

import pytest
import yaml

from tests.e2e.conftest import FAST, FleetHarness, wait_for
from zkdeploy.demo.fleet import DemoService
from zkdeploy.demo.observer import Observer
from zkdeploy.demo.scenario import wait_deploys

pytestmark = pytest.mark.e2e

ENV = {"node01": "dev", "node02": "int", "node03": "qa", "node04": "staging",
       "node05": "prod", "node06": "prod", "node07": "prod"}
QUORUM = 5
#: etch's schedule (dev and int at once, QA an hour later, staging after two, half of production
#: after three, the rest after four) with an hour compressed to five seconds
WAVES = [
    {"name": "dev", "select": "env in (dev, int)", "min_healthy_time": 1},
    {"name": "qa", "select": "env=qa", "min_age": 5},
    {"name": "staging", "select": "env=staging", "min_age": 10, "approval": True},
    {"name": "prod-half", "select": "env=prod and slice(0%, 50%)", "min_age": 15},
    {"name": "rest", "select": "*", "min_age": 20},
]


def labelled_fleet(make_fleet) -> FleetHarness:
    """Seven agents, each labelled with its environment, running app 1 everywhere."""
    harness = make_fleet([DemoService("app", quorum=QUORUM, timing=FAST)], size=7, start=False)
    fleet = harness.fleet
    for host in fleet.hosts:  # write_configs() labels every host env=demo: give each its environment
        config = yaml.safe_load(host.config.read_text())
        config["labels"]["env"] = ENV[host.name]
        host.config.write_text(yaml.safe_dump(config, sort_keys=False))
        fleet.start_agent(host)
    harness.wait_registered()
    harness.install("1")
    catalog = yaml.safe_load(fleet.catalog_file.read_text())
    catalog["services"]["app"]["waves"] = WAVES
    path = fleet.workdir / "services-waves.yaml"
    path.write_text(yaml.safe_dump(catalog, sort_keys=False))
    fleet.cli("services", "apply", str(path))
    return harness


def changed_after(observer: Observer, node: str, old: str, since: float) -> float | None:
    """When ``node`` first stopped answering ``old`` (down or another version) at or after ``since``."""
    return next((s.at for s in observer.samples if s.at >= since and s.answers.get(("app", node)) != old), None)


def versions(harness: FleetHarness) -> dict[str, str | None]:
    return {n: e.version for n, e in harness.store.current("app").items() if e.state == "online"}


@pytest.mark.timeout(420)
def test_waves_open_in_order_behind_their_gates_and_a_bad_mark_sends_the_early_waves_back(make_fleet):
    harness = labelled_fleet(make_fleet)
    fleet, store = harness.fleet, harness.store
    observer = Observer({("app", h.name): h.ports["app"] for h in fleet.hosts}).start()
    try:
        wait_for(lambda: len(observer.samples) > 5, 10, "the observer's first samples")
        # -- release 2 through etch's waves ------------------------------------------------
        harness.stage("app", "2")
        staged_at = store.release("app", "2").staged_at
        name = harness.deploy("app@2")[0]
        entry = store.deploy(name)
        plan = {w["name"]: w["nodes"] for w in entry.waves}
        assert plan == {"dev": ["node01", "node02"], "qa": ["node03"], "staging": ["node04"],
                        "prod-half": ["node06", "node07"], "rest": ["node05"]}
        # staging's age passes, but it waits for a person: it stays closed and says why
        wait_for(lambda: store.deploy(name).wave == 2 and time.time() > staged_at + 12, 90,
                 "the qa wave to be verified and staging's age to pass")
        status = json.loads(fleet.cli("status", "--json").stdout)
        staging = status["waves"][2]
        assert staging["state"] == "waiting" and "waits for approval" in staging["reason"], staging
        assert [w["state"] for w in status["waves"][:2]] == ["verified", "verified"]
        assert status["waves"][0]["versions"] == {"2": 2}
        time.sleep(2)
        assert {n: v for n, v in versions(harness).items() if ENV[n] in ("staging", "prod")} == {
            "node04": "1", "node05": "1", "node06": "1", "node07": "1"}
        assert "approved wave 3 (staging)" in fleet.cli("promote", name).stdout
        wait_deploys(store, [name], 120)
        log = store.deploy(name).wave_log
        wait_for(lambda: set(observer.final("app").values()) == {"2"}, 20, "the observer to see 2 everywhere")

        # the waves opened in order, each behind its gates
        for i, wave in enumerate(WAVES):
            assert log[i]["opened"] >= staged_at + wave.get("min_age", 0), (wave["name"], log[i])
            assert log[i]["verified"] >= log[i]["opened"]
            if i:
                assert log[i]["opened"] >= log[i - 1]["verified"], (wave["name"], log)
        assert log[2]["approved_by"] and log[2]["opened"] >= log[2]["approved_at"]
        # no node changed version before its wave opened, as the observer saw it over HTTP
        for i, wave in enumerate(WAVES):
            for node in plan[wave["name"]]:
                changed = observer.first_change("app", node, "1")
                assert changed is not None and changed >= log[i]["opened"], (node, wave["name"])

        # -- the seed's story: 3 is bad; dev, int and qa got it before anyone noticed ---------
        harness.stage("app", "3")
        bad = harness.deploy("app@3")[0]
        early = ["node01", "node02", "node03"]
        wait_for(lambda: all(versions(harness).get(n) == "3" for n in early), 90, "dev, int and qa to run 3")
        marked = fleet.cli("mark", "app", "3", "bad", "-m", "corrupts sessions", "--yes").stdout
        assert "they go to 2 under the quorum rules" in marked
        wait_for(lambda: store.deploy(bad).state == "aborted", 30, "the agents to abort the deploy of 3")
        assert "marked bad" in store.deploy(bad).message
        wait_for(lambda: set(versions(harness).values()) == {"2"} and len(versions(harness)) == 7, 90,
                 "dev, int and qa to go back to 2")
        wait_for(lambda: set(observer.final("app").values()) == {"2"}, 20, "the observer to see 2 everywhere")
        later = ["node04", "node05", "node06", "node07"]
        assert all(observer.first_answer("app", n, "3") is None for n in later)  # they held at 2
        status = json.loads(fleet.cli("status", "--json").stdout)
        app = next(s for s in status["services"] if s["service"] == "app")
        assert [(m["version"], m["mark"]) for m in app["marks"]] == [("3", "bad")]

        # -- the fix flows, in waves given for this deploy ----------------------------------
        harness.stage("app", "4")
        quick = fleet.workdir / "quick-waves.yaml"
        quick.write_text(yaml.safe_dump([{"name": "early", "select": "env in (dev, int, qa)"},
                                         {"name": "rest", "select": "*"}]))
        queued_at = time.time()
        out = fleet.cli("deploy", "app@4", "--waves", str(quick), "--json").stdout
        fix = json.loads(out)["queued"][0]["name"]
        wait_deploys(store, [fix], 120)
        wait_for(lambda: set(observer.final("app").values()) == {"4"}, 20, "the observer to see 4 everywhere")
        fix_log = store.deploy(fix).wave_log
        for node in later:  # the nodes of the second wave kept 2 until it opened
            changed = changed_after(observer, node, "2", queued_at)
            assert changed is not None and changed >= fix_log[1]["opened"], node
    finally:
        observer.stop()
    # safety, measured over HTTP for the whole run: never fewer than quorum nodes answering
    assert observer.min_answering("app") >= QUORUM
