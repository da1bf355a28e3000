"""Scrape the agents' Prometheus endpoints during a real rollout and watch the figures move."""

from __future__ import annotations

import threading
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import FAST, wait_for
from zkdeploy.demo.fleet import DemoService
from zkdeploy.demo.scenario import wait_deploys

pytestmark = pytest.mark.e2e


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(url, timeout=5) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.mark.timeout(240)
def test_the_figures_move_as_the_rollout_does(make_fleet):
    harness = make_fleet([DemoService("db", quorum=2, timing=FAST)], size=3)
    harness.install("1")
    hosts = harness.fleet.hosts
    before = {h.name: scrape(h.metrics_url) for h in hosts}
    for h in hosts:
        assert value(before[h.name], "zkdeploy_service_version_info", service="db", version="1") == 1
        assert value(before[h.name], "zkdeploy_zookeeper_connected") == 1

    seen_restarting: set[str] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for h in hosts:
                try:
                    samples = scrape(h.metrics_url)
                except OSError:
                    continue
                if value(samples, "zkdeploy_service_state", service="db", state="restarting") == 1:
                    seen_restarting.add(h.name)
            stop.wait(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        harness.stage("db", "2")
        wait_deploys(harness.store, harness.deploy("db@2"), 120)
        # the agent publishes online a moment after the deploy completes: wait for the last scrape to say so
        wait_for(lambda: all(value(scrape(h.metrics_url), "zkdeploy_service_version_info", service="db",
                                   version="2") == 1 for h in hosts), 20, "every node's metrics to say db 2")
    finally:
        stop.set()
        watcher.join(10)

    assert seen_restarting, "no scrape during the rollout saw a node restarting"
    for h in hosts:
        after = scrape(h.metrics_url)
        moved = [value(after, name, **labels) - value(before[h.name], name, **labels) for name, labels in [
            ("zkdeploy_restarts_total", {"service": "db", "outcome": "ok"}),
            ("zkdeploy_restarts_total", {"service": "db", "outcome": "rolled_back"}),
            ("zkdeploy_quorum_wait_seconds_count", {"service": "db"}),
            ("zkdeploy_restart_phase_duration_seconds_count", {"phase": "starting"}),
            ("zkdeploy_journal_change_sets_total", {"status": "done", "cause": "restart"}),
        ]]
        assert moved == [1, 0, 1, 1, 1], h.name
        fetched = sum(value(after, "zkdeploy_payload_bytes_total", source=s)
                      - value(before[h.name], "zkdeploy_payload_bytes_total", source=s) for s in ("swarm", "origin"))
        assert fetched > 0, h.name
        assert value(after, "zkdeploy_service_version_info", service="db", version="1") == 0  # the old series went
        assert value(after, "zkdeploy_service_state", service="db", state="online") == 1
        assert value(after, "zkdeploy_zookeeper_last_contact_timestamp_seconds") >= \
            value(before[h.name], "zkdeploy_zookeeper_last_contact_timestamp_seconds") > 0
