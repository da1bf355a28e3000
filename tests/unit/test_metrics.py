"""The agent's Prometheus metrics: what a scrape shows after the events of a rollout.

The rollouts run on the in-memory fleet (real agents, simulated hosts); each
agent has a registry of its own, so the figures of one node never leak into
another's.
"""

from __future__ import annotations

import hashlib
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from zkdeploy.agent.metrics import Metrics
from zkdeploy.config.schema import AgentConfig
from zkdeploy.errors import ConfigError, ZkdeployError
from zkdeploy.model import DONE, Release
from zkdeploy.testing.simfleet import SimFleet
from zkdeploy.transfer.transport import Transport

CATALOG = {"services": {"db": {"quorum": 2, "start": "run db"}}}


def scrape(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The samples of a scrape, as a user's Prometheus would parse them: (name, labels) -> value."""
    samples = {}
    for family in text_string_to_metric_families(metrics.text()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@pytest.fixture
def fleet() -> Iterator[SimFleet]:
    fleet = SimFleet(["n1", "n2", "n3", "n4"], CATALOG)
    fleet.stage("db", "1", at=1.0)
    for node in fleet.agents:
        fleet.install(node, "db", "1")
    fleet.start_all()
    fleet.rounds(1)
    yield fleet
    fleet.close()


def agent_metrics(fleet: SimFleet, node: str) -> Metrics:
    agent = fleet.agents[node].agent
    assert agent is not None
    return agent.metrics


def rounds_until(fleet: SimFleet, done, limit: int = 40) -> None:
    for _ in range(limit):
        if done():
            return
        fleet.rounds(1)
    assert done(), "the rollout did not get there"


def test_before_any_rollout_the_figures_say_what_runs_and_that_nothing_restarted(fleet: SimFleet) -> None:
    samples = scrape(agent_metrics(fleet, "n1"))
    assert value(samples, "zkdeploy_service_version_info", service="db", version="1") == 1
    assert value(samples, "zkdeploy_service_state", service="db", state="online") == 1
    assert value(samples, "zkdeploy_service_state", service="db", state="restarting") == 0
    for outcome in ("ok", "rolled_back", "held", "fenced"):
        assert value(samples, "zkdeploy_restarts_total", service="db", outcome=outcome) == 0
    assert value(samples, "zkdeploy_zookeeper_connected") == 1
    assert value(samples, "zkdeploy_zookeeper_session_state", state="connected") == 1
    assert value(samples, "zkdeploy_zookeeper_session_state", state="lost") == 0
    assert value(samples, "zkdeploy_zookeeper_last_contact_timestamp_seconds") > 0
    assert value(samples, "zkdeploy_payload_bytes_total", source="swarm") == 0


def test_a_rollout_moves_every_figure_on_every_node(fleet: SimFleet) -> None:
    fleet.stage("db", "2", at=2.0)
    name = fleet.deploy(("db", "2"))[0]
    rounds_until(fleet, lambda: fleet.operator.deploy(name).state == DONE)
    for node in fleet.agents:
        samples = scrape(agent_metrics(fleet, node))
        assert value(samples, "zkdeploy_restarts_total", service="db", outcome="ok") == 1, node
        assert value(samples, "zkdeploy_restarts_total", service="db", outcome="rolled_back") == 0, node
        assert value(samples, "zkdeploy_restart_duration_seconds_count", service="db") == 1
        for phase in ("draining", "stopping", "switching", "starting", "checking"):
            assert value(samples, "zkdeploy_restart_phase_duration_seconds_count", phase=phase) == 1, (node, phase)
        assert value(samples, "zkdeploy_quorum_wait_seconds_count", service="db") == 1
        assert value(samples, "zkdeploy_journal_change_sets_total", status="done", cause="restart") == 1
        # the version series moved: the old one is gone, not left behind at 1
        assert value(samples, "zkdeploy_service_version_info", service="db", version="2") == 1
        assert value(samples, "zkdeploy_service_version_info", service="db", version="1") is None
        assert value(samples, "zkdeploy_service_state", service="db", state="online") == 1


def test_a_release_that_fails_its_checks_counts_as_rolled_back(fleet: SimFleet) -> None:
    fleet.world.bad.add(("db", "3"))
    fleet.stage("db", "3", at=3.0)
    fleet.deploy(("db", "3"))
    fleet.rounds(6)
    totals = {outcome: sum(value(scrape(agent_metrics(fleet, n)), "zkdeploy_restarts_total", service="db",
                                 outcome=outcome) or 0 for n in fleet.agents)
              for outcome in ("ok", "rolled_back")}
    assert totals == {"ok": 0, "rolled_back": 1}  # the deploy stops after the first failure
    failed = [n for n in fleet.agents
              if value(scrape(agent_metrics(fleet, n)), "zkdeploy_restarts_total", service="db",
                       outcome="rolled_back") == 1]
    samples = scrape(agent_metrics(fleet, failed[0]))
    assert value(samples, "zkdeploy_journal_change_sets_total", status="undone", cause="restart") == 1
    assert value(samples, "zkdeploy_restart_phase_duration_seconds_count", phase="rolling_back") == 1
    assert value(samples, "zkdeploy_service_version_info", service="db", version="1") == 1


def test_a_lost_connection_shows_in_the_connection_figures(fleet: SimFleet) -> None:
    sim = fleet.agents["n2"]
    assert sim.session is not None
    before = value(scrape(agent_metrics(fleet, "n2")), "zkdeploy_zookeeper_last_contact_timestamp_seconds")
    sim.session.disconnect()
    samples = scrape(agent_metrics(fleet, "n2"))
    assert value(samples, "zkdeploy_zookeeper_connected") == 0
    assert value(samples, "zkdeploy_zookeeper_session_state", state="suspended") == 1
    assert value(samples, "zkdeploy_zookeeper_session_state", state="connected") == 0
    assert value(samples, "zkdeploy_zookeeper_last_contact_timestamp_seconds") == before  # no contact since
    assert value(scrape(agent_metrics(fleet, "n1")), "zkdeploy_zookeeper_connected") == 1
    sim.session.reconnect()
    samples = scrape(agent_metrics(fleet, "n2"))
    assert value(samples, "zkdeploy_zookeeper_connected") == 1
    assert value(samples, "zkdeploy_zookeeper_last_contact_timestamp_seconds") >= before


def test_origin_bytes_are_counted_by_source(tmp_path: Path) -> None:
    payload = tmp_path / "db-2.tar.gz"
    payload.write_bytes(b"x" * 1234)
    config = AgentConfig(node="n1", data_dir=str(tmp_path / "data"), services=("db",), swarm={"enabled": False})
    metrics = Metrics("n1")
    transport = Transport(config, metrics=metrics)
    release = Release(service="db", version="2", sha256=hashlib.sha256(payload.read_bytes()).hexdigest(),
                      size=1234, origin=str(payload), staged_by="test", staged_at=1.0)
    transport.fetch(release, tmp_path / "data" / "payload")
    samples = scrape(metrics)
    assert value(samples, "zkdeploy_payload_bytes_total", source="origin") == 1234
    assert value(samples, "zkdeploy_payload_bytes_total", source="swarm") == 0


def test_the_endpoint_serves_the_registry_and_only_it(tmp_path: Path) -> None:
    one, two = Metrics("n1"), Metrics("n2")
    one.restart_done("db", "ok", 1.5)
    host, port = one.serve("127.0.0.1:0")
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as reply:
            body = reply.read().decode()
    finally:
        one.close()
    assert 'zkdeploy_restarts_total{outcome="ok",service="db"} 1.0' in body
    assert "python_gc" not in body  # not the process-wide default registry
    assert value(scrape(two), "zkdeploy_restarts_total", service="db", outcome="ok") is None


def test_an_address_that_cannot_be_bound_is_a_config_error() -> None:
    first = Metrics("n1")
    host, port = first.serve("127.0.0.1:0")
    try:
        with pytest.raises(ConfigError, match="cannot serve metrics"):
            Metrics("n2").serve(f"{host}:{port}")
    finally:
        first.close()


def test_the_metrics_settings_default_to_loopback_and_are_checked() -> None:
    config = AgentConfig(node="n1", data_dir="/tmp/x", services=("db",))
    assert (config.metrics.enabled, config.metrics.listen) == (True, "127.0.0.1:9469")
    for bad in ("9469", "127.0.0.1:", "127.0.0.1:99999", ":9469", "host:port"):
        with pytest.raises(ValueError, match="listen must be host:port"):
            AgentConfig(node="n1", data_dir="/tmp/x", services=("db",), metrics={"listen": bad})
    with pytest.raises(ValueError, match="extra"):
        AgentConfig(node="n1", data_dir="/tmp/x", services=("db",), metrics={"port": 1})
    assert issubclass(ConfigError, ZkdeployError)


def test_an_operators_undo_request_counts_the_change_sets_it_undid(fleet: SimFleet) -> None:
    fleet.stage("db", "2", at=2.0)
    name = fleet.deploy(("db", "2"))[0]
    rounds_until(fleet, lambda: getattr(fleet.operator.deploy(name), "state", None) == "done")
    fleet.operator.request_undo("n1", {"last": 1, "since": None, "state": "pending", "by": "test"})
    agent = fleet.agents["n1"].agent
    assert agent is not None and agent.reports is not None
    agent.reports.serve_undo_requests()
    samples = scrape(agent_metrics(fleet, "n1"))
    assert value(samples, "zkdeploy_journal_change_sets_total", status="undone", cause="undo") == 1
    assert value(samples, "zkdeploy_journal_change_sets_total", status="done", cause="restart") == 1
    assert fleet.versions("db")["n1"] == "1"
