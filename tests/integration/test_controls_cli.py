"""Controlled deployment, the operator's side, against a real ZooKeeper: wave plans recorded by
deploy, marks, pins and promote; what each stores, what status shows, and every refusal."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.integration.test_cli import payload
from zkdeploy.cli.main import cli
from zkdeploy.coordination import Store
from zkdeploy.model import ONLINE, CurrentEntry, NodeRecord

pytestmark = pytest.mark.integration

LABELS = {"dev1": "dev", "int1": "int", "qa1": "qa", "stg1": "staging",
          "prod1": "prod", "prod2": "prod", "prod3": "prod", "prod4": "prod"}
CATALOG = """\
services:
  app:
    quorum: "50%"
    start: "sleep 100"
    on_failure: mark_bad
    waves:
      - {name: dev, select: "env in (dev, int)", min_healthy_time: 5m}
      - {name: qa, select: "env=qa", min_age: 1h}
      - {name: staging, select: "env=staging", min_age: 2h, approval: true}
      - {name: prod-half, select: "env=prod and slice(0%, 50%)", min_age: 3h, approval: true, require_good: true}
      - {name: rest, select: "*", min_age: 4h}
  db:
    quorum: 1
    start: "sleep 100"
"""


@pytest.fixture
def run(zk_hosts: str, zk_root: str):
    def invoke(*args: str, input: str | None = None):
        return CliRunner().invoke(cli, ["--zk", zk_hosts, "--root", zk_root, "--zk-timeout", "5", *args],
                                  input=input)
    return invoke


@pytest.fixture
def fleet(run, tmp_path: Path, store: Store) -> Store:
    """The catalog, eight labelled stand-in agents running app 1 (and a ninth, dbonly, running only
    db), and releases 1, 2 and 3 of app staged."""
    path = tmp_path / "services.yaml"
    path.write_text(CATALOG)
    assert run("services", "apply", str(path)).exit_code == 0
    for node, env in LABELS.items():
        store.register_node(NodeRecord(node=node, address="198.18.0.1", services=("app",), labels={"env": env}))
        store.add_member("app", node)
        store.publish_current("app", CurrentEntry(node=node, version="1", state=ONLINE, since=time.time()))
    store.register_node(NodeRecord(node="dbonly", address="198.18.0.2", services=("db",), labels={"env": "prod"}))
    store.publish_current("db", CurrentEntry(node="dbonly", version="1", state=ONLINE))
    for version in ("1", "2", "3"):
        result = run("stage", "app", version, str(payload(tmp_path, f"app-{version}.tar.gz")))
        assert result.exit_code == 0, result.output
    return store


def refused(result, expected: str) -> None:
    """A refusal as a user sees it: a non-zero exit and a message saying why."""
    assert result.exit_code == 2, result.output
    assert expected in result.output, result.output


# -- deploy records the wave plan --------------------------------------------------------------
def test_deploy_records_the_catalogs_wave_plan_and_status_shows_each_wave(run, fleet: Store) -> None:
    result = run("deploy", "app@2", "--json")
    assert result.exit_code == 0, result.output
    name = json.loads(result.output)["queued"][0]["name"]
    entry = fleet.deploy(name)
    assert [w["name"] for w in entry.waves] == ["dev", "qa", "staging", "prod-half", "rest"]
    assert [w["nodes"] for w in entry.waves[:3]] == [["dev1", "int1"], ["qa1"], ["stg1"]]
    half, rest = entry.waves[3]["nodes"], entry.waves[4]["nodes"]
    assert sorted(half + rest) == ["prod1", "prod2", "prod3", "prod4"] and half and rest
    assert entry.waves[1]["min_age"] == 3600.0 and entry.on_failure == "mark_bad"

    status = json.loads(run("status", "--json").output)
    assert status["active_deploy"]["name"] == name and len(status["active_deploy"]["waves"]) == 5
    waves = status["waves"]
    assert [(w["number"], w["name"], w["state"]) for w in waves] == [
        (1, "dev", "waiting"), (2, "qa", "waiting"), (3, "staging", "waiting"), (4, "prod-half", "waiting"),
        (5, "rest", "waiting")]
    # nobody has opened the first wave yet: it is due, and the agents write it at their next cycle
    assert waves[0]["reason"].startswith("due now: wave dev opened")
    assert waves[1]["reason"] == "the waves before it"
    assert waves[0]["nodes"] == ["dev1", "int1"] and waves[0]["versions"] == {"1": 2} and waves[0]["at_version"] == 0
    assert waves[2]["gate"] == {"min_age": 7200.0, "approval": True}
    text = run("status").output
    assert f"waves of {name} (app@2)" in text and "prod-half" in text and "prod1" in text
    assert "healthy 5m" in text and "age 1h" in text and "due now:" in text


def test_status_says_why_the_open_wave_waits(run, fleet: Store) -> None:
    name = json.loads(run("deploy", "app@2", "--json").output)["queued"][0]["name"]
    entry = fleet.deploy(name)
    fleet.update_deploy(entry.evolve(wave_log=({"opened": time.time()},)))  # as an agent would
    for node in ("dev1", "int1"):
        fleet.publish_current("app", CurrentEntry(node=node, version="2", state=ONLINE, since=time.time()))
    waves = json.loads(run("status", "--json").output)["waves"]
    assert waves[0]["state"] == "open" and waves[0]["versions"] == {"2": 2} and waves[0]["at_version"] == 2
    assert waves[0]["reason"].startswith("wave dev: healthy for 300s on every node")


def test_deploy_waves_file_overrides_and_no_waves_deploys_at_once(run, fleet: Store, tmp_path: Path) -> None:
    plan = tmp_path / "waves.yaml"
    plan.write_text("- {name: canary, select: 'env=prod', canary: 1}\n- {name: rest, select: '*', soak: 30}\n")
    result = run("deploy", "app@2", "--waves", str(plan), "--json")
    assert result.exit_code == 0, result.output
    entry = fleet.deploy(json.loads(result.output)["queued"][0]["name"])
    assert [w["name"] for w in entry.waves] == ["canary", "rest"]
    assert len(entry.waves[0]["nodes"]) == 1 and entry.waves[0]["nodes"][0].startswith("prod")
    assert len(entry.waves[1]["nodes"]) == 7 and entry.waves[1]["soak"] == 30.0
    result = run("deploy", "app@3", "--no-waves", "--json")
    assert result.exit_code == 0, result.output
    assert fleet.deploy(json.loads(result.output)["queued"][0]["name"]).waves == ()
    refused(run("deploy", "app@3", "--no-waves", "--waves", str(plan)), "--waves FILE or --no-waves, not both")


@pytest.mark.parametrize("plan, expected", [
    ("- {name: a, select: 'env=prod'}\n- {name: b, select: 'node=prod1'}\n",
     "overlapping waves: node prod1 is selected by wave a and by wave b"),
    ("- {name: x, select: 'env=nowhere'}\n- {name: rest, select: '*'}\n",
     "wave x: its selector env=nowhere matches no node"),
    # dbonly is labelled env=prod but does not run app: a wave of app does not take it
    ("- {name: x, select: 'node=dbonly'}\n", "wave x: its selector node=dbonly matches no node"),
    ("- {name: x, select: 'env=prod', colour: red}\n", "waves.0.colour: unknown key"),
    ("- {name: x, select: 'env in (prod'}\n", "waves.0.select: selector 'env in (prod': expected"),
    ("- {name: x, select: 'env=prod', min_age: soon}\n", "waves.0.min_age: min_age 'soon'"),
    ("- {name: x}\n- {name: x}\n", "wave names must be unique"),
    ("name: x\n", "expected a list of waves"),
])
def test_deploy_refuses_a_bad_wave_plan_and_queues_nothing(run, fleet: Store, tmp_path: Path, plan: str,
                                                           expected: str) -> None:
    path = tmp_path / "waves.yaml"
    path.write_text(plan)
    refused(run("deploy", "app@2", "--waves", str(path)), expected)
    assert fleet.deploys() == []


def test_deploy_refuses_a_catalog_plan_whose_selector_matches_no_node(run, fleet: Store, tmp_path: Path) -> None:
    path = tmp_path / "services.yaml"
    path.write_text(CATALOG.replace('select: "env=qa"', 'select: "env=qa2"'))
    assert run("services", "apply", str(path)).exit_code == 0
    result = run("deploy", "app@2")
    refused(result, "deploy refused, nothing was queued")
    assert "app: the wave plan cannot be used" in result.output and "wave qa: its selector env=qa2 matches no node" \
        in result.output
    assert fleet.deploys() == []


# -- marks ---------------------------------------------------------------------------------------
def test_mark_asks_for_bad_records_each_mark_and_unmark_clears_it(run, fleet: Store) -> None:
    for node in ("dev1", "int1"):
        fleet.publish_current("app", CurrentEntry(node=node, version="2", state=ONLINE))
    result = run("mark", "app", "2", "bad", "-m", "corrupts sessions", input="n\n")
    assert result.exit_code == 2 and "2 node(s) run it (dev1, int1); they go to 1" in result.output
    assert fleet.marks("app") == {}  # declined: nothing written
    result = run("mark", "app", "2", "bad", "-m", "corrupts sessions", input="y\n")
    assert result.exit_code == 0, result.output
    assert "marked app@2 bad" in result.output
    result = run("mark", "app", "3", "good", "-m", "passed QA", "--json")  # good: no question asked
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["mark"] == "good"
    result = run("mark", "app", "3", "badfwd", "-m", "new schema", "--yes")
    assert result.exit_code == 0 and "they hold where they are" in result.output
    records = sorted(fleet.marks("app").values(), key=lambda m: m.at)
    assert [(m.version, m.mark, m.why) for m in records] == [
        ("2", "bad", "corrupts sessions"), ("3", "good", "passed QA"), ("3", "badfwd", "new schema")]
    assert all(m.by and m.at for m in records)
    svc = next(s for s in json.loads(run("status", "--json").output)["services"] if s["service"] == "app")
    assert [(m["version"], m["mark"], m["why"]) for m in svc["marks"]] == [
        ("2", "bad", "corrupts sessions"), ("3", "badfwd", "new schema")]  # the latest per version
    assert "release marks" in run("status").output

    result = run("unmark", "app", "3", "-m", "schema fixed in place")
    assert result.exit_code == 0 and "was badfwd" in result.output
    svc = next(s for s in json.loads(run("status", "--json").output)["services"] if s["service"] == "app")
    assert [m["version"] for m in svc["marks"]] == ["2"]
    refused(run("unmark", "app", "3", "-m", "again"), "app@3 is not marked")
    assert len(fleet.marks("app")) == 4  # append-only: the unmark is a record too
    history = json.loads(run("history", "--marks", "--service", "app", "--json").output)
    assert [h["mark"] for h in history] == ["bad", "good", "badfwd", "none"]
    assert "schema fixed in place" in run("history", "--marks").output


@pytest.mark.parametrize("args, code, expected", [
    (["mark", "cache", "2", "bad", "-m", "x", "--yes"], 2, "unknown service 'cache'"),
    (["mark", "app", "9", "bad", "-m", "x", "--yes"], 2, "app@9 is not staged (staged: 1, 2, 3)"),
    (["mark", "app", "2", "worse", "-m", "x"], 2, "'worse' is not one of 'bad', 'badfwd', 'good'"),
    (["mark", "app", "2", "bad", "--yes"], 2, "Missing option '-m'"),
    (["mark", "app", "2", "bad", "-m", " ", "--yes"], 2, "a mark needs a reason"),
    (["mark", "app", "../x", "bad", "-m", "x", "--yes"], 2, "invalid version name"),
    (["unmark", "app", "9", "-m", "x"], 2, "app@9 is not staged"),
    (["unmark", "cache", "2", "-m", "x"], 2, "unknown service 'cache'"),
])
def test_mark_refuses_bad_input_and_writes_nothing(run, fleet: Store, args: list[str], code: int,
                                                   expected: str) -> None:
    result = run(*args)
    assert result.exit_code == code, result.output
    assert expected in result.output
    assert fleet.marks("app") == {} and fleet.marks("cache") == {}


# -- pins ------------------------------------------------------------------------------------------
def test_pin_shows_in_status_and_nodes_is_replaced_and_unpinned(run, fleet: Store) -> None:
    before = time.time()
    result = run("pin", "prod1", "app", "1", "--for", "2h", "-m", "customer demo")
    assert result.exit_code == 0, result.output
    assert "pinned prod1 to app@1 until" in result.output and "it runs it already" in result.output
    pin = fleet.pin("prod1", "app")
    assert (pin.version, pin.why) == ("1", "customer demo") and before + 7190 < pin.until < time.time() + 7210
    status = json.loads(run("status", "--json").output)
    assert [(p["node"], p["version"], p["active"]) for p in status["pins"]] == [("prod1", "1", True)]
    app = next(s for s in status["services"] if s["service"] == "app")
    assert [p["node"] for p in app["pins"]] == ["prod1"]
    assert "customer demo" in run("status").output
    rows = {r["node"]: r for r in json.loads(run("nodes", "--json").output)}
    assert rows["prod1"]["pins"]["app"]["version"] == "1" and rows["prod2"]["pins"] == {}
    assert "app=1 until" in run("nodes").output

    result = run("pin", "prod1", "app", "3", "--forever", "-m", "trunk bump", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["until"] is None and out["replaced"]["version"] == "1" and out["running"] == "1"
    assert fleet.pin("prod1", "app").version == "3"
    until = "2999-01-01T00:00:00+00:00"
    assert run("pin", "prod2", "app", "2", "--until", until, "-m", "x").exit_code == 0
    assert fleet.pin("prod2", "app").until == 32472144000.0

    result = run("unpin", "prod1", "app")
    assert result.exit_code == 0 and "unpinned prod1 from app@3" in result.output
    assert fleet.pin("prod1", "app") is None
    refused(run("unpin", "prod1", "app"), "prod1 has no pin for app")


@pytest.mark.parametrize("args, expected", [
    (["pin", "ghost", "app", "1", "--forever", "-m", "x"], "unknown node 'ghost'"),
    (["pin", "prod1", "app", "9", "--forever", "-m", "x"], "app@9 is not staged"),
    (["pin", "prod1", "cache", "1", "--forever", "-m", "x"], "unknown service 'cache'"),
    (["pin", "dbonly", "app", "1", "--forever", "-m", "x"], "dbonly does not run app"),
    (["pin", "prod1", "app", "1", "-m", "x"], "give exactly one of --until TIME, --for DURATION or --forever"),
    (["pin", "prod1", "app", "1", "--forever", "--for", "1h", "-m", "x"], "give exactly one of"),
    (["pin", "prod1", "app", "1", "--until", "2001-01-01T00:00", "-m", "x"], "that is in the past"),
    (["pin", "prod1", "app", "1", "--until", "tomorrow", "-m", "x"], "expected a date and time"),
    (["pin", "prod1", "app", "1", "--for", "a while", "-m", "x"], "--for 'a while': expected seconds"),
    (["pin", "prod1", "app", "1", "--forever"], "Missing option '-m'"),
    (["pin", "../etc", "app", "1", "--forever", "-m", "x"], "invalid node name"),
])
def test_pin_refuses_bad_input_and_writes_nothing(run, fleet: Store, args: list[str], expected: str) -> None:
    refused(run(*args), expected)
    assert fleet.pins() == []


# -- promote ----------------------------------------------------------------------------------------
def test_promote_approves_the_next_wave_that_waits_and_refuses_the_rest(run, fleet: Store) -> None:
    name = json.loads(run("deploy", "app@2", "--json").output)["queued"][0]["name"]
    result = run("promote", name)
    assert result.exit_code == 0, result.output
    assert f"approved wave 3 (staging) of {name}" in result.output
    entry = fleet.deploy(name)
    assert entry.wave_log[2]["approved_by"] and entry.wave_log[2]["approved_at"] > 0 and entry.state == "pending"
    result = run("promote", name, "--wave", "prod-half", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["wave"] == 4 and "takes only a release marked good, and app@2 is unmarked" in out["note"]
    status = json.loads(run("status", "--json").output)
    assert [w["approved_by"] is not None for w in status["waves"]] == [False, False, True, True, False]

    zversion = fleet.deploy(name).zversion
    refused(run("promote", name), f"no wave of deploy {name} waits for approval")
    refused(run("promote", name, "--wave", "1"), "wave dev of deploy")
    refused(run("promote", name, "--wave", "9"), f"deploy {name} has no wave '9' (waves, by number or name: 1 dev")
    refused(run("promote", "d-9999999999"), "no deploy d-9999999999")
    fleet.update_deploy(fleet.deploy(name).evolve(wave_log=({"opened": 1.0},)))  # an agent opened wave 1
    zversion = fleet.deploy(name).zversion
    refused(run("promote", name, "--wave", "dev"), f"wave dev of deploy {name} is already open")
    assert run("pause", name).exit_code == 0
    zversion = fleet.deploy(name).zversion
    refused(run("promote", name, "--wave", "5"), f"deploy {name} is paused: resume it first")
    assert fleet.deploy(name).zversion == zversion  # nothing written by the refusals

    run("abort", name, "--force")
    plain = json.loads(run("deploy", "app@3", "--no-waves", "--json").output)["queued"][0]["name"]
    refused(run("promote", plain), f"deploy {plain} (app@3) has no waves")
