"""The agent's decision cycle, restarts and deploy bookkeeping, on the in-memory store and simulated hosts."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

import pytest

from zkdeploy.coordination.session import ForwardingSession, Op, Stat
from zkdeploy.model import DONE, FAILED, HALTED, ONLINE, PENDING, ROLLED_BACK
from zkdeploy.testing.memory import MemorySession
from zkdeploy.testing.simfleet import SimFleet
from zkdeploy.testing.simhost import SimTransport

CATALOG = {"services": {
    "db": {"quorum": 2, "start": "run db"},
    "web": {"quorum": 2, "start": "run web", "depends_on": ["db"]},
}}


def make_fleet(nodes: int = 4, catalog: dict | None = None) -> SimFleet:
    fleet = SimFleet([f"n{i}" for i in range(1, nodes + 1)], catalog or CATALOG)
    for service in fleet.catalog["services"]:
        fleet.stage(service, "1", at=1.0)
        for node in fleet.agents:
            fleet.install(node, service, "1")
    return fleet


@pytest.fixture
def fleet() -> Iterator[SimFleet]:
    fleet = make_fleet()
    fleet.start_all()
    fleet.rounds(1)
    yield fleet
    fleet.close()


def rounds_until(fleet: SimFleet, done, limit: int = 50) -> None:
    for _ in range(limit):
        if done():
            return
        fleet.rounds(1)
    assert done(), "did not get there"


def test_a_rollout_restarts_every_node_in_dependency_order_within_quorum(fleet: SimFleet) -> None:
    fleet.stage("db", "2", at=2.0)
    fleet.stage("web", "2", at=2.0)
    names = fleet.deploy(("db", "2"), ("web", "2"))
    rounds_until(fleet, lambda: all(fleet.operator.deploy(n).state == DONE for n in names))
    assert set(fleet.versions("db").values()) == set(fleet.versions("web").values()) == {"2"}
    steps = fleet.world.steps
    last_db = max(i for i, s in enumerate(steps) if s[1] == "db")
    first_web = min(i for i, s in enumerate(steps) if s[1] == "web")
    assert last_db < first_web  # no web node restarted before every db node ran db@2
    # quorum 2 of 4: never more than 2 nodes of a service down at once
    down: dict[str, set[str]] = {"db": set(), "web": set()}
    for node, service, step, _ in steps:
        (down[service].add if step == "stop" else down[service].discard)(node)
        assert len(down[service]) <= 2


def test_waiting_for_quorum_is_a_step_that_returns(fleet: SimFleet) -> None:
    fleet.world.running.pop(("n2", "db"))  # n2's db died on its own
    fleet.world.running.pop(("n3", "db"))  # and n3's
    for node in ("n2", "n3"):
        fleet.monitor(node)
    assert fleet.online("db") == ["n1", "n4"]
    fleet.stage("db", "2", at=2.0)
    fleet.deploy(("db", "2"))
    fleet.cycle("n1")  # returns at once: n1 may not go down (2 online, quorum 2)
    cycle = fleet.agents["n1"].agent.cycle
    assert "db" in cycle.pending and cycle.pending["db"].request.reason == "waiting for quorum: 2 online, quorum 2"
    assert fleet.versions("db")["n1"] == "1"
    assert fleet.operator.queue("db") == ["n1"] and fleet.operator.slots("db") == []


class Recorder(ForwardingSession):
    """The writes of one agent's session, in order: ("commit", [(op, path)...]), ("create", path), ("delete", path)."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.writes: list[tuple[str, object]] = []

    def commit(self, ops: Sequence[Op]) -> list[str | Stat | None]:
        self.writes.append(("commit", [(type(op).__name__, op.path) for op in ops]))
        return super().commit(ops)

    def create(self, path: str, data: bytes = b"", **kwargs) -> str:
        self.writes.append(("create", path))
        return super().create(path, data, **kwargs)

    def delete(self, path: str, version: int = -1) -> None:
        self.writes.append(("delete", path))
        super().delete(path, version)


def test_a_restart_ends_with_one_transaction_giving_the_slot_back_and_counting_the_node_online(
        fleet: SimFleet) -> None:
    """The next waiter is woken by a node coming back online: the slot given back, the entry online,
    its online token and the availability epoch are one transaction, and the change report to the
    history comes after it, not in the hand-off."""
    store = fleet.agents["n1"].agent.store
    recorder = store._session = Recorder(store._session)
    fleet.stage("db", "2", at=2.0)
    name = fleet.deploy(("db", "2"))[0]
    rounds_until(fleet, lambda: fleet.operator.deploy(name).state == DONE)
    assert fleet.versions("db")["n1"] == "2"
    layout = store._layout
    slot, token = layout.slot("db", "n1"), layout.online_token("db", "n1")
    online = [i for i, (kind, ops) in enumerate(recorder.writes)
              if kind == "commit" and ("Create", token) in ops]  # type: ignore[operator]
    assert online, recorder.writes
    back = recorder.writes[online[-1]][1]
    assert ("Delete", slot) in back and ("SetData", layout.up_service("db")) in back  # type: ignore[operator]
    assert ("delete", slot) not in recorder.writes, "the slot is given back in the online transaction"
    reports = [i for i, (kind, path) in enumerate(recorder.writes)
               if kind == "create" and str(path).startswith(layout.node_history("n1"))]
    assert reports and reports[-1] > online[-1], "the change report follows the node's coming back"


def test_a_head_whose_place_in_the_queue_was_deleted_under_it_queues_again(fleet: SimFleet) -> None:
    """A head knows it is first without listing the queue again; when its place was deleted under
    it (another client), its slot transaction, which also leaves the queue, fails: it must look at
    the queue again, see the place gone and queue anew, not decide again for ever on a lost place."""
    fleet.world.running.pop(("n2", "db"))
    fleet.world.running.pop(("n3", "db"))
    for node in ("n2", "n3"):
        fleet.monitor(node)
    fleet.stage("db", "2", at=2.0)
    name = fleet.deploy(("db", "2"))[0]
    fleet.cycle("n1")  # first in the queue, waiting for quorum (2 online, quorum 2)
    request = fleet.agents["n1"].agent.cycle.pending["db"].request
    assert request.reason.startswith("waiting for quorum") and request.at_head
    fleet.operator._session.delete(fleet.operator._layout.lock_queue("db") + "/" + str(request._queue.node))
    for node in ("n2", "n3"):  # n2 and n3 come back: one more node may go down
        fleet.world.running[(node, "db")] = "1"
        fleet.monitor(node)
    rounds_until(fleet, lambda: fleet.operator.deploy(name).state == DONE)
    assert set(fleet.versions("db").values()) == {"2"}


def test_a_stalled_download_of_one_service_does_not_hold_back_another(tmp_path) -> None:
    fleet = make_fleet(3)
    gate = threading.Event()  # web@2's download hangs until the gate opens
    transports = {n: SimTransport({"web": gate}) for n in fleet.agents}
    try:
        for node in fleet.agents:
            fleet.start(node, transport=transports[node], threaded=True)
        fleet.rounds(1)
        fleet.stage("web", "2", at=2.0)  # newer: every node starts fetching it, and it hangs
        fleet.stage("db", "2", at=3.0)
        for node in fleet.agents:  # db@2 is already on disk everywhere
            fleet.install_release(node, "db", "2")
        name = fleet.deploy(("db", "2"))[0]
        deadline = time.monotonic() + 20
        while fleet.operator.deploy(name).state != DONE and time.monotonic() < deadline:
            fleet.rounds(1)
            time.sleep(0.01)
        assert fleet.operator.deploy(name).state == DONE
        assert set(fleet.versions("db").values()) == {"2"}
        assert all(("web", "2") in t.fetches for t in transports.values())  # the web fetches did start...
        assert not gate.is_set()  # ...and are still hanging
    finally:
        gate.set()
        fleet.close()


def test_a_failed_release_rolls_the_node_back_and_halts_past_the_budget(fleet: SimFleet) -> None:
    fleet.stage("db", "2", at=2.0)
    fleet.world.bad.add(("db", "2"))
    name = fleet.deploy(("db", "2"), max_failures=1)[0]
    rounds_until(fleet, lambda: fleet.operator.deploy(name).state == HALTED)
    entry = fleet.operator.deploy(name)
    assert len(entry.failures) == 2 and "2 node(s) failed (max_failures 1)" in entry.message
    assert set(fleet.versions("db").values()) == {"1"}  # every node that tried went back to 1
    fleet.rounds(3)
    assert set(fleet.versions("db").values()) == {"1"} and fleet.online("db") == ["n1", "n2", "n3", "n4"]


def test_with_no_steward_up_no_node_restarts_for_a_deploy_its_nodes_reports_put_past_the_budget(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Under ACL roles only stewards write deploy entries; with every steward down the nodes' own
    failure reports still stop the rollout at its budget, and a steward that comes back records it."""
    fleet = make_fleet()
    try:
        with monkeypatch.context() as no_stewards:
            no_stewards.setattr(MemorySession, "stewards", property(lambda self: False))
            fleet.start_all()
            fleet.rounds(1)
            fleet.stage("db", "2", at=2.0)
            fleet.world.bad.add(("db", "2"))
            name = fleet.deploy(("db", "2"), max_failures=1)[0]
            rounds_until(fleet, lambda: len(fleet.operator.failure_reports(fleet.operator.deploy(name))) == 2)
            fleet.rounds(10)
            entry = fleet.operator.deploy(name)
            assert entry.state == PENDING and entry.failures == ()  # nobody may write it
            tried = {node for node, service, step, _ in fleet.world.steps if service == "db" and step == "stop"}
            assert tried == set(fleet.operator.failure_reports(entry))  # no third node tried
            assert set(fleet.versions("db").values()) == {"1"}
        rounds_until(fleet, lambda: fleet.operator.deploy(name).state == HALTED)  # a steward is back
        entry = fleet.operator.deploy(name)
        assert sorted(f["node"] for f in entry.failures) == sorted(tried)
        assert "2 node(s) failed (max_failures 1)" in entry.message
    finally:
        fleet.close()


def test_on_failure_rollback_queues_a_rollback_and_aborts_the_dependants(fleet: SimFleet) -> None:
    fleet.stage("db", "2", at=2.0)
    fleet.stage("web", "2", at=2.0)
    fleet.world.bad.add(("db", "2"))
    db, web = fleet.deploy(("db", "2"), ("web", "2"), on_failure="rollback", previous={"db": "1", "web": "1"})
    rounds_until(fleet, lambda: fleet.operator.deploy(db).state == ROLLED_BACK)
    assert fleet.operator.deploy(web).state == "aborted"
    rollback = [d for d in fleet.operator.deploys() if d.kind == "rollback"]
    assert [(d.service, d.version) for d in rollback] == [("db", "1")]
    rounds_until(fleet, lambda: fleet.operator.deploy(rollback[0].name).state == DONE)
    assert set(fleet.versions("web").values()) == {"1"}


def test_a_node_whose_check_fails_is_published_failed_and_not_counted(fleet: SimFleet) -> None:
    fleet.world.bad.add(("db", "1"))  # db@1 stops passing its checks everywhere but n1... (simulated)
    fleet.world.running[("n1", "db")] = "1b"
    for node in fleet.agents:
        fleet.monitor(node)
    states = {n: e.state for n, e in fleet.operator.current("db").items()}
    assert states == {"n1": ONLINE, "n2": FAILED, "n3": FAILED, "n4": FAILED}


def test_a_paused_deploy_stops_new_restarts_and_resumes(fleet: SimFleet) -> None:
    fleet.stage("db", "2", at=2.0)
    name = fleet.deploy(("db", "2"))[0]
    fleet.cycle("n1")
    entry = fleet.operator.deploy(name)
    fleet.operator.update_deploy(entry.evolve(state="paused"))
    fleet.rounds(3)
    assert fleet.versions("db") == {"n1": "2", "n2": "1", "n3": "1", "n4": "1"}
    fleet.operator.update_deploy(fleet.operator.deploy(name).evolve(state=PENDING))
    rounds_until(fleet, lambda: fleet.operator.deploy(name).state == DONE)
