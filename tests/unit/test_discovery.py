"""Facts and discovery: the selector language over facts and classes, gathering facts, --expect, and a
deploy of discovered nodes on real agents over the in-memory store."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from zkdeploy.agent.facts import gather, parse_fact_output
from zkdeploy.cli.discovery_cmd import discover_for_deploy
from zkdeploy.config.schema import AgentConfig, FactsSettings
from zkdeploy.errors import ConfigError, DeployRefusedError
from zkdeploy.model import DONE, CurrentEntry, DeployEntry, NodeRecord
from zkdeploy.policy.discovery import answers, discover, parse_expect, view
from zkdeploy.policy.selector import parse
from zkdeploy.testing.simfleet import SimFleet

WEB = {"os.family": "debian", "cpus": 8, "memory_mb": 16000, "classes": ["roles::web", "apache"],
       "country": "de", "env": "prod"}
DB = {"os.family": "redhat", "cpus": 32, "classes": ["roles::db"], "country": "fr", "env": "staging"}


@pytest.mark.parametrize("text, web, db", [
    ("class=roles::web", True, False),
    ("class!=roles::web", False, True),
    ("/apache/", True, False),
    ("/^roles::/ and country=de", True, False),
    ("classes=~/db$/", False, True),
    ("os.family==debian", True, False),
    ("cpus>=16", False, True),
    ("memory_mb<20000", True, False),  # a missing fact never compares
    ("!env=prod", False, True),
    ("((country=de and env=staging) or env=prod) and /apache/", True, False),
    ("not (class in (roles::db, x)) and has(memory_mb)", True, False),
    ("*", True, True),
])
def test_selector_reads_facts_and_classes(text: str, web: bool, db: bool) -> None:
    selector = parse(text)
    assert (selector.matches("web1", WEB), selector.matches("db1", DB)) == (web, db)


def test_bad_selectors_say_where() -> None:
    with pytest.raises(ConfigError, match="bad regular expression"):
        parse("/[a/")
    with pytest.raises(ConfigError, match="expected"):
        parse("class=web and")


def test_view_puts_labels_over_facts_and_adds_service_versions() -> None:
    record = NodeRecord(node="n1", services=("web",), labels={"env": "prod", "classes": ["web"]},
                        facts={"env": "fact-env", "cpus": 4})
    seen = view(record, {"web": {"n1": CurrentEntry(node="n1", version="1.0", state="online")}})
    assert seen["env"] == "prod" and seen["cpus"] == 4 and seen["classes"] == ["web"]
    assert seen["web.version"] == "1.0" and seen["web.state"] == "online"
    assert discover("web.version=1.0 and cpus<8", {"n1": record}, {"web": {"n1": CurrentEntry(
        node="n1", version="1.0", state="online")}}) == ["n1"]


def test_expect_parses_counts_and_ranges() -> None:
    assert parse_expect("4").admits(4) and not parse_expect("4").admits(5)
    assert parse_expect("2..5").admits(5) and not parse_expect("2..5").admits(1)
    assert parse_expect("3..").admits(100) and parse_expect("..3").admits(0)
    for bad in ("", "..", "5..2", "x"):
        with pytest.raises(ConfigError):
            parse_expect(bad)


def test_answers_name_the_silent_and_the_unexpected() -> None:
    entries = {"a": CurrentEntry(node="a", version="2", state="online"),
               "b": CurrentEntry(node="b", version="1", state="online"),
               "x": CurrentEntry(node="x", version="1", state="restarting", target="2")}
    seen = answers(["a", "b", "c"], "2", entries)
    assert seen.answered == ("a",) and seen.no_response == ("b", "c") and seen.unexpected == ("x",)


def _executable(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_facts_builtin_site_file_and_executables(tmp_path: Path) -> None:
    (tmp_path / "facts.yaml").write_text("country: de\nclasses: [roles::web]\nrack: {row: 3}\n")
    d = tmp_path / "facts.d"
    d.mkdir()
    _executable(d / "10-yaml", "echo 'disk_gb: 120'\n")
    _executable(d / "20-kv", "echo 'team=payments'\necho 'tier=gold'\n")
    _executable(d / "30-fails", "echo boom >&2; exit 3\n")
    _executable(d / "40-slow", "sleep 5\n")
    (d / "README").write_text("not executable: ignored\n")
    facts = gather(FactsSettings(file=str(tmp_path / "facts.yaml"), dir=str(d), timeout=0.5))
    values = facts.values
    assert values["cpus"] == os.cpu_count() and values["kernel"] == "linux" and "zkdeploy.version" in values
    assert values["memory_mb"] > 0 and values["os.family"]
    assert values["country"] == "de" and values["classes"] == ["roles::web"] and values["rack.row"] == 3
    assert values["disk_gb"] == 120 and values["team"] == "payments" and values["tier"] == "gold"
    assert len(facts.errors) == 2
    assert any("30-fails: exit 3: boom" in e for e in facts.errors)
    assert any("40-slow: timed out after 0.5s" in e for e in facts.errors)


def test_a_broken_facts_file_is_reported_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "f.yaml").write_text("a: [unclosed\n")
    facts = gather(FactsSettings(file=str(tmp_path / "f.yaml"), dir=str(tmp_path / "missing")))
    assert "cpus" in facts.values and len(facts.errors) == 2
    with pytest.raises(Exception, match="not a mapping"):
        parse_fact_output("- a\n- b\n")


def test_agent_config_validates_facts_and_lb_keys() -> None:
    base = {"node": "n1", "data_dir": "/tmp/x", "services": ["web"]}
    config = AgentConfig(**base, facts={"dir": "/etc/zkdeploy/facts.d", "timeout": 2}, lb_agent={"port": 7001})
    assert config.facts is not None and config.facts.timeout == 2 and config.lb_agent is not None
    with pytest.raises(ValueError, match="extra"):
        AgentConfig(**base, facts={"dirr": "/x"})
    with pytest.raises(ValueError, match="timeout"):
        AgentConfig(**base, facts={"timeout": 0})


NODES = [f"n{i}" for i in range(1, 7)]
LABELS = {n: {"env": "prod" if i % 2 else "dev", "classes": "web"} for i, n in enumerate(NODES)}


@pytest.fixture
def fleet():
    catalog = {"services": {"app": {"quorum": 2, "start": "run app"}}}
    fleet = SimFleet(NODES, catalog, labels=LABELS)
    for version in ("1", "2"):
        fleet.stage("app", version)
    for node in NODES:
        fleet.install(node, "app", "1")
    fleet.start_all()
    fleet.rounds(1)
    yield fleet
    fleet.close()


def test_agents_publish_facts_and_a_selected_deploy_touches_exactly_the_discovered_nodes(fleet: SimFleet) -> None:
    record = fleet.operator.nodes()["n1"]
    assert record.facts["cpus"] == os.cpu_count() and record.labels["env"] == "dev"
    with pytest.raises(DeployRefusedError, match=r"found 3 node.*expected 4"):
        discover_for_deploy(fleet.operator, ["app"], "env=prod and kernel=linux", "4")
    assert fleet.operator.deploys() == []  # refused before anything was written
    chosen = discover_for_deploy(fleet.operator, ["app"], "env=prod and kernel=linux", "3")
    assert chosen == {"app": ("n2", "n4", "n6")}
    entry = DeployEntry(service="app", version="2", requested_by="test", created=time.time(),
                        nodes=chosen["app"], select="env=prod")
    (name,) = fleet.operator.enqueue([entry])
    for _ in range(30):
        fleet.rounds(1)
        done = fleet.operator.deploy(name)
        if done is not None and done.state == DONE:
            break
    assert fleet.versions("app") == {"n1": "1", "n2": "2", "n3": "1", "n4": "2", "n5": "1", "n6": "2"}
    done = fleet.operator.deploy(name)
    assert done is not None and done.state == DONE
    assert done.message == "done on 3 of 3 discovered node(s)"


def test_a_discovered_node_that_went_away_is_named_as_not_answering(fleet: SimFleet) -> None:
    chosen = discover_for_deploy(fleet.operator, ["app"], "env=prod", "3")
    fleet.crash("n4")
    fleet.expire_dead_sessions()
    (name,) = fleet.operator.enqueue([DeployEntry(service="app", version="2", requested_by="test",
                                                  created=time.time(), nodes=chosen["app"], select="env=prod")])
    for _ in range(30):
        fleet.rounds(1)
        entry = fleet.operator.deploy(name)
        if entry is not None and entry.state == DONE:
            break
    entry = fleet.operator.deploy(name)
    assert entry is not None and entry.state == DONE
    assert entry.message == "done on 2 of 3 discovered node(s); no response from: n4"
