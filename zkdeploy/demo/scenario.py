"""The newcomer's scenario: a 6-host fleet of ``db`` and ``web``, rolled from version 1 to 2."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zkdeploy.coordination import Store
from zkdeploy.demo.fleet import DemoService, FleetLb, LocalFleet
from zkdeploy.demo.load import Load
from zkdeploy.demo.observer import Observer
from zkdeploy.errors import RolloutError, ZkdeployError
from zkdeploy.model import DONE, OPEN_DEPLOY_STATES
from zkdeploy.policy.quorum import max_unavailable
from zkdeploy.testing.zkserver import ZkCluster

DEMO_SERVICES = [
    DemoService("db", quorum=4),
    DemoService("web", quorum="67%", depends_on=("db",)),
]


def wait_deploys(store: Store, names: list[str], timeout: float,
                 on_tick: Callable[[], None] | None = None) -> float:
    """Block until every named deploy left the open states; returns when it happened."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entries = [e for e in (store.deploy(n) for n in names) if e is not None]
        if len(entries) == len(names) and all(e.state not in OPEN_DEPLOY_STATES for e in entries):
            bad = [e for e in entries if e.state != DONE]
            if bad:
                raise RolloutError("; ".join(f"{e.service}@{e.version} {e.state}: {e.message}" for e in bad))
            return time.time()
        if on_tick:
            on_tick()
        time.sleep(0.05)
    raise RolloutError(f"rollout did not finish within {timeout:g}s")


def run_demo(zk_hosts: str | None = None, size: int = 6, keep: bool = False,
             say: Callable[[str], None] = print, progress: Callable[[Store], None] | None = None,
             timeout: float = 300.0, lb: bool = False) -> dict[str, Any]:
    """Run the whole scenario and return the summary; everything started is cleaned up.

    With ``lb`` the services sit behind a real HAProxy (Debian's ``haproxy``): each agent drains its
    server before a restart and puts it back after, and a few clients send load through the balancer
    during the rollout; the summary says how many of their requests failed."""
    workdir = Path(tempfile.mkdtemp(prefix="zkdeploy-demo-"))
    cluster = None
    fleet = None
    observer = None
    store = None
    proxy = None
    load = None
    lbdir = Path(tempfile.mkdtemp(prefix="zkh-")) if lb else None  # short: a UNIX socket path is short
    root = f"/zkdeploy-demo-{int(time.time())}"
    try:
        if zk_hosts is None:
            say("starting a private ZooKeeper on loopback ...")
            cluster = ZkCluster(size=1).start()
            zk_hosts = cluster.hosts
        say(f"ZooKeeper at {zk_hosts}, fleet root {root}, hosts under {workdir}")
        if lbdir is not None:
            from zkdeploy.testing.haproxy import HAProxy

            proxy = HAProxy(lbdir, [])
        fleet = LocalFleet(workdir, zk_hosts, DEMO_SERVICES, size=size, root=root,
                           lb=FleetLb(proxy.socket) if proxy else None)
        if proxy is not None:
            proxy.backends = fleet.lb_backends()
            proxy.start()
            say("HAProxy in front of the fleet: " + ", ".join(
                f"{b.name} on 127.0.0.1:{b.port}" for b in proxy.backends))
        fleet.write_configs()
        fleet.cli("services", "apply", str(fleet.catalog_file))
        for svc in DEMO_SERVICES:
            for version in ("1", "2"):
                fleet.payload(svc.name, version)
        say(f"starting {size} agents, each running db and web ...")
        fleet.start()
        store = Store.connect(zk_hosts, root)
        _wait_registered(store, fleet, timeout=60)
        for svc in DEMO_SERVICES:
            fleet.cli("stage", svc.name, "1", str(fleet.payload_dir / f"{svc.name}-1.tar.gz"))
        say("installing version 1 everywhere (a fleet that is down starts without quorum) ...")
        out = fleet.cli("deploy", "db@1", "web@1", "--json").stdout
        names = [q["name"] for q in json.loads(out)["queued"]]
        wait_deploys(store, names, timeout)
        observer = Observer({(svc.name, h.name): h.ports[svc.name] for svc in DEMO_SERVICES for h in fleet.hosts})
        observer.start()
        time.sleep(0.5)
        for svc in DEMO_SERVICES:
            fleet.cli("stage", svc.name, "2", str(fleet.payload_dir / f"{svc.name}-2.tar.gz"))
        if proxy is not None:
            _wait_serving(proxy, timeout=60)
            load = Load([b.port for b in proxy.backends], clients=4).start()
            say("4 clients send requests through HAProxy during the rollout ...")
        say("rolling db and web to version 2 ...")
        started = time.time()
        out = fleet.cli("deploy", "db@2", "web@2", "--json").stdout
        names = [q["name"] for q in json.loads(out)["queued"]]
        finished = wait_deploys(store, names, timeout, on_tick=(lambda: progress(store)) if progress else None)
        time.sleep(0.5)
        observer.stop()
        summary = summarize(observer, fleet, started, finished)
        if load is not None:
            load.stop()
            summary["load"] = {"requests": load.total, "failed": load.failed,
                               "errors": [list(e) for e in load.errors()]}
        return summary
    finally:
        if load is not None:
            load.stop()
        if observer:
            observer.stop()
        if fleet:
            fleet.stop()
        if store:
            try:
                store.delete_tree(root)
            except ZkdeployError as exc:
                say(f"could not remove {root} from ZooKeeper: {exc}")
            store.close()
        if proxy is not None:
            proxy.stop()
        if lbdir is not None:
            shutil.rmtree(lbdir, ignore_errors=True)
        if cluster:
            cluster.stop()
        if keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def summarize(observer: Observer, fleet: LocalFleet, started: float, finished: float) -> dict[str, Any]:
    size = len(fleet.hosts)
    services = []
    for svc in fleet.services:
        allowed = max_unavailable(svc.quorum, size)
        final = observer.final(svc.name)
        services.append({
            "service": svc.name,
            "quorum": svc.quorum,
            "nodes": size,
            "max_unavailable_allowed": allowed,
            "max_unavailable_observed": observer.max_down(svc.name),
            "within_quorum": observer.max_down(svc.name) <= allowed,
            "nodes_at_new_version": sum(1 for v in final.values() if v == "2"),
        })
    db_done = max(observer.first_answer("db", h.name, "2") or float("inf") for h in fleet.hosts)
    web_first = min(observer.first_change("web", h.name, "1") or float("inf") for h in fleet.hosts)
    return {
        "total_seconds": round(finished - started, 2),
        "nodes": size,
        "services": services,
        "dependency_order_respected": web_first >= db_done,
        "samples": len(observer.samples),
    }


def _wait_serving(proxy: Any, timeout: float) -> None:
    """Until HAProxy sends traffic to every server (the services of version 1 are up and checked)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(v.serving for b in proxy.backends for v in proxy.backend(b.name).values()):
            return
        time.sleep(0.2)
    raise RolloutError(f"HAProxy did not take every server within {timeout:g}s (see {proxy.workdir}/haproxy.log)")


def _wait_registered(store: Store, fleet: LocalFleet, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    want = {h.name for h in fleet.hosts}
    while time.monotonic() < deadline:
        if want <= set(store.nodes()) and all(
                want <= set(store.current(s.name)) for s in fleet.services):
            return
        time.sleep(0.2)
    missing = want - set(store.nodes())
    raise RolloutError(f"agents did not register within {timeout:g}s: {', '.join(sorted(missing))} "
                       f"(see {fleet.workdir}/<node>/agent.log)")
