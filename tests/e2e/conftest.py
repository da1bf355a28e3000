"""End-to-end fixtures: a local fleet of agents as processes, and helpers to drive it."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_for
from zkdeploy.coordination import Store
from zkdeploy.demo.fleet import DemoService, LocalFleet, ServiceTiming
from zkdeploy.demo.scenario import wait_deploys

FAST = ServiceTiming(start_delay=0.2, stop_delay=0.1)


def two_services(db_quorum: int | str = 3, web_quorum: int | str = 3) -> list[DemoService]:
    return [DemoService("db", quorum=db_quorum, timing=FAST),
            DemoService("web", quorum=web_quorum, depends_on=("db",), timing=FAST)]


def tree_digest(root: Path) -> dict[str, str]:
    """Every file, symlink and directory under ``root`` with its content hash or link target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if rel.startswith("state") or rel.startswith("logs") or rel.startswith("run"):
                continue  # the agent's own bookkeeping, logs and pid files
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            elif path.is_file():
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                out[rel] = "dir"
    return out


class FleetHarness:
    """A started fleet with its ZooKeeper store and CLI."""

    def __init__(self, fleet: LocalFleet, store: Store) -> None:
        self.fleet = fleet
        self.store = store

    def wait_registered(self, timeout: float = 60) -> None:
        names = {h.name for h in self.fleet.hosts}
        wait_for(lambda: all(names <= set(self.store.current(s.name)) for s in self.fleet.services),
                 timeout, "every agent to register")

    def arm_crash(self, host, at: str) -> None:
        """Restart ``host``'s agent so that it SIGKILLs itself on reaching ``at`` (service:phase)."""
        self.fleet.kill_agent(host, signal.SIGTERM)
        self.fleet.start_agent(host, {"ZKDEPLOY_CRASH_AT": at})
        wait_for(lambda: host.name in self.store.nodes(), 30, f"{host.name}'s armed agent to register")

    def stage(self, service: str, version: str, **payload_kw: object) -> Path:
        path = self.fleet.payload(service, version, **payload_kw)
        self.fleet.cli("stage", service, version, str(path))
        return path

    def deploy(self, *targets: str) -> list[str]:
        out = self.fleet.cli("deploy", *targets, "--json").stdout
        return [q["name"] for q in json.loads(out)["queued"]]

    def install(self, version: str, timeout: float = 90) -> None:
        """Stage and roll ``version`` of every service, and wait for it."""
        for svc in self.fleet.services:
            self.stage(svc.name, version)
        wait_deploys(self.store, self.deploy(*(f"{s.name}@{version}" for s in self.fleet.services)), timeout)


@pytest.fixture
def make_fleet(tmp_path: Path, zk_hosts: str, zk_root: str) -> Iterator[Callable[..., FleetHarness]]:
    made: list[tuple[LocalFleet, Store]] = []

    def make(services: list[DemoService] | None = None, size: int = 5, start: bool = True,
             env: dict[str, str] | None = None) -> FleetHarness:
        fleet = LocalFleet(tmp_path / "fleet", zk_hosts, services or two_services(), size=size,
                           root=zk_root, session_timeout=4.0, env=env)
        fleet.write_configs()
        store = Store.connect(zk_hosts, zk_root)
        made.append((fleet, store))
        fleet.cli("services", "apply", str(fleet.catalog_file))
        harness = FleetHarness(fleet, store)
        if start:
            fleet.start()
            harness.wait_registered()
        return harness

    yield make
    for fleet, store in made:
        fleet.stop()
        store.close()
