"""Deploys as tested scenarios end to end: agents as processes on a real ZooKeeper, the demo services
behind a real HAProxy (Debian's), driven by ``zkdeploy scenario run`` and judged from outside.

Every host blocks its server in the balancer and the balancer's own view must say so, installs and
the version must answer, runs a command checked by another, unblocks and traffic must flow; load
through the balancer never fails; the summary is green; a second run changes nothing.  When one
host's balancer never hears the agent's drain, that host bails out before its service is touched,
stays held, and the deploy halts (exit 4).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import FAST, FleetHarness, tree_digest, wait_for
from zkdeploy.coordination import Store
from zkdeploy.demo.fleet import DemoService, FleetLb, LocalFleet
from zkdeploy.demo.observer import Observer
from zkdeploy.journal import Journal
from zkdeploy.model import FAILED, HALTED
from zkdeploy.testing.haproxy import HAProxy

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def _haproxy_installed() -> None:
    """These tests need a real HAProxy: a missing one is a failure that says how to get it, not a skip."""
    if shutil.which("haproxy") is None and not Path("/usr/sbin/haproxy").exists():
        pytest.fail("Debian's haproxy is not installed: run scripts/setup (or apt-get install -y haproxy)")

QUORUM = 3
SIZE = 4


def scenario_file(path: Path, *, block_retries: int = 10) -> Path:
    path.write_text(yaml.safe_dump({
        "scenario": "db-2",
        "deploy": "db@2.0",
        "steps": [
            {"name": "block", "do": "lb_block", "check": "traffic_blocked", "timeout": 5,
             "retries": block_retries, "interval": 0.3},
            {"name": "install", "do": "install", "check": "version_answers", "url": "http://127.0.0.1:{db_port}/",
             "timeout": 5, "retries": 5, "interval": 0.3},
            {"name": "smoke", "do": "command", "command": "echo smoke {version} >> {data}/logs/scenario.log",
             "undo": "echo undo {version} >> {data}/logs/scenario.log",
             "check": "command", "check_command": "grep -q {version} {release}/VERSION", "timeout": 5},
            {"name": "unblock", "do": "lb_unblock", "check": "traffic_flows", "timeout": 5, "retries": 20,
             "interval": 0.3},
        ],
    }, sort_keys=False))
    return path


class Load:
    """One client sending GET / through the balancer back to back (bounded: one request at a time)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ok = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=5) as answer:
                    answer.read()
                self.ok += 1
            except OSError as exc:
                self.failed.append(str(exc))
            self._stop.wait(0.01)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture
def lb_fleet(tmp_path: Path, zk_hosts: str, zk_root: str) -> Iterator[Callable[..., tuple[FleetHarness, HAProxy]]]:
    made: list[tuple[LocalFleet, Store, HAProxy, Path]] = []

    def make(deaf: tuple[str, ...] = ()) -> tuple[FleetHarness, HAProxy]:
        """SIZE agents running db 1.0 behind HAProxy; the hosts in ``deaf`` get no agent-check."""
        lbdir = Path(tempfile.mkdtemp(prefix="zkh-"))  # short: a UNIX socket path holds at most 107 bytes
        proxy = HAProxy(lbdir, [])
        fleet = LocalFleet(tmp_path / "fleet", zk_hosts, [DemoService("db", quorum=QUORUM, timing=FAST)],
                           size=SIZE, root=zk_root, session_timeout=4.0,
                           lb=FleetLb(proxy.socket, agent_interval=0.3, drain_timeout=3.0, ready_timeout=10.0))
        proxy.backends = fleet.lb_backends(deaf)
        store = Store.connect(zk_hosts, zk_root)
        made.append((fleet, store, proxy, lbdir))
        proxy.start()
        fleet.write_configs()
        fleet.cli("services", "apply", str(fleet.catalog_file))
        harness = FleetHarness(fleet, store)
        fleet.start()
        harness.wait_registered()
        harness.install("1.0")
        for host in fleet.hosts:
            proxy.wait("db", host.name, lambda v: v.serving, timeout=20)
        harness.stage("db", "2.0")
        return harness, proxy

    yield make
    for fleet, store, proxy, lbdir in made:
        fleet.stop()
        store.close()
        proxy.stop()
        shutil.rmtree(lbdir, ignore_errors=True)


def observe(fleet: LocalFleet) -> Observer:
    return Observer({("db", h.name): h.ports["db"] for h in fleet.hosts}).start()


def test_every_host_passes_every_step_behind_a_real_haproxy_and_a_second_run_changes_nothing(
        lb_fleet, tmp_path: Path) -> None:
    harness, proxy = lb_fleet()
    fleet = harness.fleet
    path = scenario_file(tmp_path / "db-2.yaml")
    observer = observe(fleet)
    with Load(proxy.port("db")) as load:
        run = fleet.cli("scenario", "run", str(path), "--timeout", "180", "--json", check=False, timeout=240)
    observer.stop()
    assert run.returncode == 0, run.stdout + run.stderr
    summary = json.loads(run.stdout)
    assert summary["green"] and summary["state"] == "done"
    assert [r["node"] for r in summary["hosts"]] == [h.name for h in fleet.hosts]
    for row in summary["hosts"]:
        assert row["status"] == "done", row
        assert [(c["step"], c["status"]) for c in row["steps"]] == [
            ("block", "passed"), ("install", "passed"), ("smoke", "passed"), ("unblock", "passed")], row
        assert "DRAIN" in row["steps"][0]["seen"]  # the balancer's own view, not the agent's wish
        assert "2.0" in row["steps"][1]["seen"]
    assert set(observer.final("db").values()) == {"2.0"}
    assert observer.min_answering("db") >= QUORUM
    assert load.failed == [], f"{len(load.failed)} of {load.ok + len(load.failed)} requests failed"
    assert load.ok > 50
    for host in fleet.hosts:
        assert (host.root / "data" / "logs" / "scenario.log").read_text().split() == ["smoke", "2.0"]
        proxy.wait("db", host.name, lambda v: v.serving)

    pids = {h.name: fleet.service_pids(h) for h in fleet.hosts}
    again = fleet.cli("scenario", "run", str(path), "--timeout", "60", check=False, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "GREEN: 4/4 host(s) passed every step" in again.stdout
    for host in fleet.hosts:
        row = next(line for line in again.stdout.splitlines() if line.startswith(host.name + " "))
        assert row.split()[1:] == ["already"] * 4 + ["already", "done"], row
    assert {h.name: fleet.service_pids(h) for h in fleet.hosts} == pids  # nothing was restarted


def test_a_host_whose_balancer_never_shows_it_blocked_bails_out_before_its_service_is_touched(
        lb_fleet, tmp_path: Path) -> None:
    harness, _proxy = lb_fleet(deaf=("node03",))  # HAProxy does not poll node03's agent: it cannot drain it
    fleet, store = harness.fleet, harness.store
    node03 = next(h for h in fleet.hosts if h.name == "node03")
    pids = fleet.service_pids(node03)
    path = scenario_file(tmp_path / "db-2.yaml", block_retries=3)
    observer = observe(fleet)
    run = fleet.cli("scenario", "run", str(path), "--timeout", "180", check=False, timeout=240)
    observer.stop()
    assert run.returncode == 4, run.stdout + run.stderr
    assert "scenario db-2 is not green" in run.stderr and "halted" in run.stderr
    row = next(line for line in run.stdout.splitlines() if line.startswith("node03 "))
    assert row.split()[1:] == ["FAILED", "-", "-", "-", "held"], row
    assert "step 'block': check traffic_blocked failed after 3 attempt(s): balancer: db/node03 UP" in run.stdout
    assert "NOT GREEN" in run.stdout

    entry = next(e for e in store.deploys() if e.scenario == "db-2")
    assert entry.state == HALTED and "scenario check failed" in entry.message
    held = store.current("db")["node03"]
    assert held.state == FAILED and held.detail.startswith("held:") and held.version == "1.0"
    # its service was never touched: the same process answered 1.0 the whole time
    assert fleet.service_pids(node03) == pids
    assert all(s.answers[("db", "node03")] == "1.0" for s in observer.samples)
    assert observer.min_answering("db") >= QUORUM


EDGE = ("node02", "node03", "node05", "node08")


def test_select_takes_exactly_the_4_hosts_it_discovers_and_a_wrong_count_changes_nothing(
        make_fleet, tmp_path: Path) -> None:
    harness = make_fleet([DemoService("app", quorum=6, timing=FAST)], size=9, start=False)
    fleet, store = harness.fleet, harness.store
    for host in fleet.hosts:  # four of the nine are tier=edge
        config = yaml.safe_load(host.config.read_text())
        config["labels"]["tier"] = "edge" if host.name in EDGE else "core"
        host.config.write_text(yaml.safe_dump(config, sort_keys=False))
        fleet.start_agent(host)
    harness.wait_registered()
    harness.install("1.0")
    harness.stage("app", "2.0")
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump({
        "scenario": "edge-2", "deploy": "app@2.0", "select": "tier=edge and env=demo", "expect": "4",
        "steps": [{"name": "install", "do": "install", "check": "version_answers",
                   "url": "http://127.0.0.1:{app_port}/", "timeout": 5}]}))
    queued = len(store.deploys())
    wait_for(lambda: len(store.holders("app", "2.0")) == len(fleet.hosts), 60, "every agent to prefetch app 2.0")
    before = {h.name: tree_digest(h.root / "data") for h in fleet.hosts}
    dry = fleet.cli("scenario", "plan", str(path), "--json", check=False, timeout=120)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    planned = json.loads(dry.stdout)
    assert sorted(planned["answers"]) == list(EDGE) and planned["missing"] == []  # only the discovered hosts
    assert {h.name: tree_digest(h.root / "data") for h in fleet.hosts} == before  # nothing changed, ...
    assert len(store.deploys()) == queued                                         # ... nothing was queued
    text = fleet.cli("scenario", "plan", str(path)).stdout
    assert "app: 1.0 -> 2.0" in text and "stop app 1.0" in text
    wrong = fleet.cli("scenario", "run", str(path), "--expect", "5", check=False)
    assert wrong.returncode == 2 and "found 4 node(s), expected 5; nothing changed" in wrong.stderr
    assert len(store.deploys()) == queued  # nothing was queued

    pids = {h.name: fleet.service_pids(h) for h in fleet.hosts}
    run = fleet.cli("scenario", "run", str(path), "--timeout", "120", "--json", check=False, timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    summary = json.loads(run.stdout)
    assert summary["queued"]["hosts"] == list(EDGE) and [r["node"] for r in summary["hosts"]] == list(EDGE)
    assert summary["green"] and summary["unexpected"] == [] and summary["no_response"] == []
    versions = {n: e.version for n, e in store.current("app").items()}
    assert {n for n, v in versions.items() if v == "2.0"} == set(EDGE)
    for host in fleet.hosts:
        if host.name not in EDGE:  # untouched: the same service process, still at 1.0
            assert versions[host.name] == "1.0" and fleet.service_pids(host) == pids[host.name]
        else:  # the plan was exactly what each host then did, step for step
            plan = planned["answers"][host.name]["services"][0]
            with Journal.open(host.root / "data" / "state" / "journal.db", create=False) as journal:
                change = next(c for c in journal.list_changes() if c.description == "app 1.0 -> 2.0")
            assert [t.execute.description for t in change.tasks] == [a["description"] for a in plan["actions"]]
