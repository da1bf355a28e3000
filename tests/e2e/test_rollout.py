"""A real rolling deploy: agents as processes, a real ZooKeeper, services probed over HTTP."""

from __future__ import annotations

import json
import signal

import pytest

from tests.e2e.conftest import two_services, wait_for
from zkdeploy.demo.observer import Observer
from zkdeploy.demo.scenario import wait_deploys
from zkdeploy.journal import Journal

pytestmark = pytest.mark.e2e


def observe(harness) -> Observer:
    fleet = harness.fleet
    return Observer({(s.name, h.name): h.ports[s.name] for s in fleet.services for h in fleet.hosts}).start()


@pytest.mark.timeout(240)
def test_rollout_keeps_quorum_follows_dependencies_and_converges(make_fleet):
    harness = make_fleet(size=5)
    harness.install("1")
    observer = observe(harness)
    try:
        wait_for(lambda: len(observer.samples) > 5, 10, "the observer's first samples")
        for svc in ("db", "web"):
            harness.stage(svc, "2")
        names = harness.deploy("web@2", "db@2")
        wait_deploys(harness.store, names, 120)
        wait_for(lambda: set(observer.final("db").values()) == set(observer.final("web").values()) == {"2"},
                 20, "the observer to see every node at 2")
    finally:
        observer.stop()

    hosts = [h.name for h in harness.fleet.hosts]
    # safety: never fewer than quorum (3) nodes answering, measured over HTTP
    assert observer.min_answering("db") >= 3
    assert observer.min_answering("web") >= 3
    # and the rollout did use the slots it had: some moment had 2 db nodes down
    assert observer.max_down("db") >= 1
    # order: no web node changed before every db node answered version 2
    db_done = max(observer.first_answer("db", h, "2") for h in hosts)
    web_first = min(observer.first_change("web", h, "1") for h in hosts)
    assert web_first >= db_done
    # liveness: every node runs the new version, as probed and as published
    assert set(observer.final("db").values()) == {"2"}
    assert set(observer.final("web").values()) == {"2"}
    status = json.loads(harness.fleet.cli("status", "--json").stdout)
    for svc in status["services"]:
        assert svc["versions"] == [{"version": "2", "state": "online", "nodes": 5}]
        assert svc["waiting_for"] == "no rollout under way"
        assert svc["staged"]["version"] == "2" and svc["staged"]["holders"] == 5
    # the payloads went through the swarm: every host announces itself as a complete peer
    swarm = json.loads(harness.fleet.cli("swarm", "db@2", "--json").stdout)
    assert sorted(swarm["peers"]) == hosts and all(p["complete"] for p in swarm["peers"].values())
    from_swarm = sum("from the swarm, sha256 verified" in h.log.read_text() for h in harness.fleet.hosts)
    assert from_swarm >= 4  # one node fetched each payload from the origin, the others from peers
    # the releases are where the layout says, and the live one is a symlink to v2
    for host in harness.fleet.hosts:
        link = host.root / "data" / "current" / "web"
        assert link.is_symlink() and link.resolve().name == "2"
        assert (host.root / "data" / "releases" / "web" / "1").is_dir()
        # drained before the stop, undrained after the health checks, for each service in order
        lb = (host.root / "data" / "logs" / "lb.log").read_text().split("\n")
        assert [line for line in lb if line.endswith(" 2") or line.startswith("drain")][-4:] == [
            "drain db 1", "undrain db 2", "drain web 1", "undrain web 2"]
        # every host journaled its restarts, each for its deploy, and the journal matches the disk
        with Journal.open(host.root / "data" / "state" / "journal.db", create=False) as journal:
            changes = {c.description: c for c in journal.list_changes()}
            for service, deploy_name in (("db", names[0]), ("web", names[1])):
                change = changes[f"{service} 1 -> 2"]
                assert change.status == "done" and change.deploy_id == deploy_name
                kinds = [t.execute.kind for t in change.tasks]
                assert kinds == ["zkdeploy.hooks", "zkdeploy.service_stop", "symlink_swap",
                                 "zkdeploy.service_start", "zkdeploy.hooks"]
                swap = journal.blame(host.root / "data" / "current" / service)
                assert swap.change_id == change.id and swap.execute.params["target"].endswith(f"{service}/2")


@pytest.mark.timeout(240)
def test_agent_killed_mid_restart_releases_its_slot_and_the_rollout_completes(make_fleet):
    harness = make_fleet(size=5)
    harness.install("1")
    victim = harness.fleet.hosts[2]
    # restart the victim's agent armed to die (SIGKILL) right before it starts db version 2
    harness.arm_crash(victim, "db:starting")
    observer = observe(harness)
    try:
        harness.stage("db", "2")
        names = harness.deploy("db@2")
        wait_for(lambda: victim.process.poll() is not None, 60, "the armed agent to kill itself")
        assert victim.process.returncode == -signal.SIGKILL
        wait_deploys(harness.store, names, 120)
    finally:
        observer.stop()
    store = harness.store
    # its ephemeral slot, queue node and /current entry went with its session
    assert harness.store.slots("db") == []
    assert victim.name not in store.queue("db")
    assert victim.name not in store.current("db")
    others = [h.name for h in harness.fleet.hosts if h is not victim]
    assert {n: store.current("db")[n].version for n in others} == {n: "2" for n in others}
    # safety with one node down through no action of zkdeploy: quorum 3 minus that one
    assert observer.min_answering("db") >= 2
    # the victim comes back (unarmed), finds its service down and starts the most popular version
    harness.fleet.start_agent(victim)
    wait_for(lambda: (e := store.current("db").get(victim.name)) and e.state == "online" and e.version == "2",
             60, "the returning node to run db 2")


@pytest.mark.timeout(240)
def test_payload_whose_hash_does_not_match_is_never_unpacked(make_fleet):
    harness = make_fleet(size=5)
    harness.install("1")
    # the origin file is replaced after staging (while the agents are down, so none fetched
    # the good one first): every agent must refuse it
    for host in harness.fleet.hosts:
        harness.fleet.kill_agent(host, signal.SIGTERM)
    path = harness.stage("db", "2")
    harness.fleet.payload("db", "2-tampered").replace(path)
    for host in harness.fleet.hosts:
        harness.fleet.start_agent(host)
    harness.wait_registered()
    names = harness.deploy("db@2")

    def refused_everywhere():
        entries = harness.store.current("db")
        return all("does not match" in e.detail for e in entries.values())

    wait_for(refused_everywhere, 60, "every agent to refuse the payload")
    for host in harness.fleet.hosts:
        assert not (host.root / "data" / "releases" / "db" / "2").exists()
        assert (host.root / "data" / "current" / "db").resolve().name == "1"
    assert harness.store.deploy(names[0]).state == "pending"
    harness.fleet.cli("abort", names[0], "--force")
    assert harness.store.deploy(names[0]).state == "aborted"


@pytest.mark.timeout(240)
def test_failed_health_check_rolls_the_node_back_and_halts_the_deploy(make_fleet):
    harness = make_fleet(size=5)
    harness.install("1")
    observer = observe(harness)
    try:
        harness.stage("db", "2", fail_health=True)  # version 2 answers 500 on /health
        name = harness.deploy("db@2")[0]
        wait_for(lambda: harness.store.deploy(name).state == "halted", 120, "the deploy to halt")
        wait_for(lambda: all(e.state == "online" and e.version == "1"
                             for e in harness.store.current("db").values()), 60, "every node online at 1")
        wait_for(lambda: set(observer.final("db").values()) == {"1"}, 20, "the observer to see every db at 1")
    finally:
        observer.stop()
    entry = harness.store.deploy(name)
    # nodes that restart at once (the quorum allows 2) may fail together; no third one starts
    assert 1 <= len(entry.failures) <= 2
    assert all("health checks failed" in f["error"] for f in entry.failures)
    failed = {f["node"] for f in entry.failures}
    for host in harness.fleet.hosts:
        # a failed node went back to version 1 through its journal; the others were never touched
        assert (host.root / "data" / "current" / "db").resolve().name == "1"
        with Journal.open(host.root / "data" / "state" / "journal.db", create=False) as journal:
            last = next(c for c in journal.list_changes() if c.description.startswith("db "))
        assert (last.description, last.status) == (("db 1 -> 2", "undone") if host.name in failed
                                                   else ("db - -> 1", "done"))
    assert set(observer.final("db").values()) == {"1"}
    assert observer.min_answering("db") >= 3
    status = json.loads(harness.fleet.cli("status", "--json").stdout)
    db = next(s for s in status["services"] if s["service"] == "db")
    assert db["waiting_for"].startswith(f"halted: {len(failed)} node(s) failed")
    # an operator aborts it; the fleet stays on version 1
    harness.fleet.cli("abort", name, "--force")
    assert harness.store.deploy(name).state == "aborted"


@pytest.mark.timeout(240)
def test_on_failure_rollback_returns_every_switched_node_to_the_previous_version(make_fleet):
    services = two_services()
    services[0].on_failure = "rollback"
    services[0].health_retries = 20
    harness = make_fleet(services, size=5)
    harness.install("1")
    victim = harness.fleet.hosts[-1].name
    observer = observe(harness)
    try:
        harness.stage("db", "2", fail_health_on=(victim,))  # version 2 is bad on one node only
        harness.stage("web", "2")
        names = harness.deploy("db@2", "web@2")
        wait_for(lambda: harness.store.deploy(names[0]).state == "rolled_back", 120, "the deploy to fail")
        rollback = wait_for(lambda: next((d for d in harness.store.deploys() if d.kind == "rollback"), None),
                            10, "the rollback deploy")
        wait_deploys(harness.store, [rollback.name], 120)
        wait_for(lambda: all(v == "1" for v in observer.final("db").values()), 30, "every db node back at 1")
    finally:
        observer.stop()
    assert (rollback.service, rollback.version) == ("db", "1")
    assert harness.store.deploy(names[1]).state == "aborted"  # web@2 depended on the failed db@2
    assert [f["node"] for f in harness.store.deploy(names[0]).failures] == [victim]
    assert observer.min_answering("db") >= 3
    assert set(observer.final("web").values()) == {"1"}
    for host in harness.fleet.hosts:
        assert (host.root / "data" / "current" / "db").resolve().name == "1"


@pytest.mark.timeout(240)
def test_killswitch_stops_every_new_step_until_it_is_lifted(make_fleet):
    harness = make_fleet(size=3, services=two_services(db_quorum=2, web_quorum=2))
    harness.install("1")
    harness.fleet.cli("killswitch", "on", "-m", "incident 4711: hands off")
    harness.stage("db", "2")
    name = harness.deploy("db@2")[0]
    # every agent logs the message, and nobody moves
    for host in harness.fleet.hosts:
        wait_for(lambda host=host: "killswitch on: incident 4711: hands off" in host.log.read_text(),
                 20, f"{host.name} to log the killswitch")
    assert harness.store.slots("db") == []
    assert {e.version for e in harness.store.current("db").values()} == {"1"}
    status = json.loads(harness.fleet.cli("status", "--json").stdout)
    assert status["killswitch"]["message"] == "incident 4711: hands off"
    assert next(s for s in status["services"] if s["service"] == "db")["waiting_for"].startswith(
        "stopped by the killswitch")
    harness.fleet.cli("killswitch", "off")
    wait_deploys(harness.store, [name], 120)
    assert {e.version for e in harness.store.current("db").values()} == {"2"}


@pytest.mark.timeout(240)
def test_agent_killed_after_starting_the_new_release_keeps_it_when_healthy(make_fleet):
    harness = make_fleet(size=5)
    harness.install("1")
    victim = harness.fleet.hosts[1]
    harness.arm_crash(victim, "db:checking")  # dies with db 2 already started
    observer = observe(harness)
    try:
        harness.stage("db", "2")
        names = harness.deploy("db@2")
        wait_for(lambda: victim.process.poll() is not None, 60, "the armed agent to kill itself")
        harness.fleet.start_agent(victim)  # unarmed: it must not stop the healthy db 2 without a slot
        wait_deploys(harness.store, names, 120)
        wait_for(lambda: (e := harness.store.current("db").get(victim.name)) and e.state == "online",
                 60, "the victim to publish its state")
    finally:
        observer.stop()
    assert harness.store.current("db")[victim.name].version == "2"
    # once it answered version 2, the victim's db never went back to 1 or down
    answers = [s.answers[("db", victim.name)] for s in observer.samples]
    first = answers.index("2")
    assert set(answers[first:]) == {"2"}

    def settled() -> bool:  # the agent publishes what runs as it registers, and settles its journal just after
        with Journal.open(victim.root / "data" / "state" / "journal.db", create=False) as journal:
            return journal.interrupted_changes() == []

    wait_for(settled, 30, "the victim to settle its interrupted change")
    with Journal.open(victim.root / "data" / "state" / "journal.db", create=False) as journal:
        change = next(c for c in journal.list_changes() if c.description == "db 1 -> 2")
        assert change.status == "failed" and "crash" in (change.note or "")
        assert journal.interrupted_changes() == []
        assert journal.blame(victim.root / "data" / "current" / "db").change_id == change.id
