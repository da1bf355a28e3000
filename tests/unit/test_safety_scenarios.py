"""The safety scenarios of the protocol review, each against real agents on the in-memory store.

Every test is one interleaving a review found (network faults, lost replies,
operator actions at unlucky moments) and asserts what an outside observer
would see: how many nodes answer, what order services restarted in, what the
deploy entries say.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from zkdeploy import crash
from zkdeploy.errors import SessionLostError
from zkdeploy.model import ABORTED, DONE, FAILED, HALTED, ONLINE, PAUSED, PENDING, Killswitch
from zkdeploy.testing.simfleet import SimFleet

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
    fleet.start_all()
    fleet.rounds(1)
    return fleet


@pytest.fixture
def fleet() -> Iterator[SimFleet]:
    fleet = make_fleet()
    yield fleet
    fleet.close()


def rounds_until(fleet: SimFleet, done, limit: int = 40) -> None:
    for _ in range(limit):
        if done():
            return
        fleet.rounds(1)
    assert done(), "did not get there"


def state(fleet: SimFleet, name: str) -> str:
    entry = fleet.operator.deploy(name)
    assert entry is not None
    return entry.state


def set_state(fleet: SimFleet, name: str, new: str) -> None:
    entry = fleet.operator.deploy(name)
    assert entry is not None
    fleet.operator.update_deploy(entry.evolve(state=new))


# -- 4: abort and rollback keep dependency order ------------------------------------------------
def test_after_an_abort_a_dependant_deploy_never_starts_and_the_rollback_goes_first(fleet: SimFleet) -> None:
    fleet.stage("db", "2", at=2.0)
    fleet.stage("web", "2", at=2.0)
    db, web = fleet.deploy(("db", "2"), ("web", "2"), previous={"db": "1", "web": "1"})
    fleet.cycle("n1")  # n1's db goes to 2: the db fleet is mixed
    set_state(fleet, db, HALTED)
    set_state(fleet, db, ABORTED)  # the documented procedure: abort, then roll back
    fleet.rounds(3)
    assert set(fleet.versions("web").values()) == {"1"}, "web restarted on a mixed db fleet"
    entry = fleet.operator.deploy(web)
    assert entry is not None and entry.state == ABORTED
    assert entry.message == f"aborted: it depends on db, whose deploy {db} (db@2) was aborted"
    rollback = fleet.deploy(("db", "1"))[0]
    rounds_until(fleet, lambda: state(fleet, rollback) == DONE)
    assert set(fleet.versions("db").values()) == {"1"} and set(fleet.versions("web").values()) == {"1"}


# -- 5: a lost reply leaves no ghost ----------------------------------------------------------------
@pytest.mark.parametrize("op", ["create", "commit", "delete"])
def test_a_lost_reply_in_the_restart_protocol_leaves_no_ghost(fleet: SimFleet, op: str) -> None:
    fleet.stage("db", "2", at=2.0)
    name = fleet.deploy(("db", "2"))[0]
    fleet.agents["n1"].session.lose_next_reply(1, op)
    rounds_until(fleet, lambda: state(fleet, name) == DONE)
    assert set(fleet.versions("db").values()) == {"2"}
    assert fleet.operator.queue("db") == [] and fleet.operator.slots("db") == []


def test_a_lost_reply_to_taking_the_slot_keeps_the_node_restarting(fleet: SimFleet) -> None:
    fleet.stage("db", "2", at=2.0)
    fleet.deploy(("db", "2"))
    steps: list[tuple[str, int]] = []
    fleet.world.on_step = lambda node, service, step: steps.append((step, len(fleet.operator.slots(service))))
    fleet.agents["n1"].session.lose_next_reply(1, "commit")
    fleet.cycle("n1")
    assert ("stop", 1) in steps  # it went on with its slot, found again after the lost reply
    assert fleet.operator.slots("db") == [] and fleet.versions("db")["n1"] == "2"


# -- 6: a node that returns during a paused deploy comes back after an abort -------------------------
def test_a_node_down_during_a_paused_deploy_starts_again_after_the_abort(fleet: SimFleet) -> None:
    fleet.stage("db", "2", at=2.0)
    name = fleet.deploy(("db", "2"))[0]
    set_state(fleet, name, PAUSED)
    fleet.crash("n4")
    fleet.world.running.pop(("n4", "db"))  # the host went down with its agent
    fleet.expire_dead_sessions()
    fleet.start("n4")  # it comes back while the deploy is paused
    fleet.rounds(2)
    set_state(fleet, name, ABORTED)
    fleet.rounds(3)
    assert fleet.versions("db")["n4"] == "1" and "n4" in fleet.online("db")


# -- 7: the failure budget counts nodes, and a restarted agent remembers ---------------------------
def test_a_restarted_agent_does_not_retry_a_release_that_failed_on_it(fleet: SimFleet) -> None:
    fleet.stage("db", "2", at=2.0)
    fleet.world.bad.add(("db", "2"))
    name = fleet.deploy(("db", "2"), max_failures=1)[0]
    fleet.cycle("n1")  # n1 fails, rolls back: one failure, within the budget
    entry = fleet.operator.deploy(name)
    assert entry is not None and [f["node"] for f in entry.failures] == ["n1"] and entry.state == PENDING
    fleet.crash("n1")
    fleet.expire_dead_sessions()
    fleet.start("n1")
    fleet.cycle("n1")
    fleet.cycle("n1")  # the new agent must not retry the known-bad release
    entry = fleet.operator.deploy(name)
    assert entry is not None and [f["node"] for f in entry.failures] == ["n1"] and entry.state == PENDING
    assert fleet.versions("db")["n1"] == "1"


# -- 8: a failed publish is written again ----------------------------------------------------------
def test_a_failed_publish_is_asserted_again_by_the_monitor(fleet: SimFleet) -> None:
    fleet.world.bad.add(("db", "1"))
    session = fleet.agents["n1"].session
    # online -> failed flips the entry and its online token in one transaction, retried at once as two
    # writes: the connection is down for both
    session.fail_next(1, SessionLostError("connection loss (test)"), op="commit")
    session.fail_next(1, SessionLostError("connection loss (test)"), op="set")
    fleet.monitor("n1")  # n1's db fails its checks; the write that says so is lost
    assert fleet.operator.current("db")["n1"].state == ONLINE
    fleet.monitor("n1")
    assert fleet.operator.current("db")["n1"].state == FAILED
    online = {n for n, e in fleet.operator.current("db").items() if e.state == ONLINE}
    assert fleet.operator.quorum_view("db", "n2").others_online == len(online - {"n2"})  # n1's token is gone too


# -- 9: the fence comes last, immediately before the destructive step ----------------------------------
def test_a_session_lost_while_publishing_the_phase_stops_the_step(fleet: SimFleet) -> None:
    fleet.stage("db", "2", at=2.0)
    fleet.deploy(("db", "2"))
    agent = fleet.agents["n1"].agent
    assert agent is not None
    publish = agent.presence.publish

    def expiring_publish(service: str, **kw: object) -> None:
        publish(service, **kw)  # type: ignore[arg-type]
        if str(kw.get("detail", "")).startswith("stopping"):
            fleet.agents["n1"].session.expire()  # the session goes while the phase is being written

    agent.presence.publish = expiring_publish  # type: ignore[method-assign]
    fleet.cycle("n1")
    assert ("n1", "db", "stop", "1") not in fleet.world.steps
    assert fleet.versions("db")["n1"] == "1"


# -- 10: crash recovery obeys the killswitch ----------------------------------------------------------
def test_crash_recovery_waits_while_the_killswitch_is_on(fleet: SimFleet) -> None:
    fleet.stage("db", "2", at=2.0)
    fleet.world.bad.add(("db", "2"))
    fleet.deploy(("db", "2"), max_failures=4)
    with crash.installed(crash.raise_at("undo:*:before")):
        fleet.cycle("n1")  # dies at the start of the roll-back: db@2 runs, failing
    assert fleet.agents["n1"].agent is None and fleet.versions("db")["n1"] == "2"
    fleet.operator.set_killswitch(Killswitch(message="hands off", by="test"))
    fleet.expire_dead_sessions()
    fleet.start("n1")
    fleet.rounds(3)
    assert fleet.versions("db")["n1"] == "2"  # nothing moved under the killswitch
    fleet.operator.set_killswitch(None)
    rounds_until(fleet, lambda: fleet.versions("db")["n1"] == "1")


# -- 12: the most-popular rule counts the node itself -------------------------------------------------
def test_after_a_split_abort_session_blips_follow_one_rule_fleet_wide(tmp_path) -> None:
    """3 x v1 and 3 x v2: counting itself, every node sees a tie, which goes to the newest release.
    Left out, each node saw the other version ahead and moved to it: the fleet flip-flopped."""
    fleet = make_fleet(6, {"services": {"db": {"quorum": 3, "start": "run db"}}})
    try:
        fleet.stage("db", "2", at=2.0)
        name = fleet.deploy(("db", "2"))[0]
        for node in ("n1", "n2", "n3"):
            fleet.cycle(node)
        set_state(fleet, name, ABORTED)
        fleet.rounds(1)
        before = fleet.versions("db")
        assert sorted(before.values()) == ["1", "1", "1", "2", "2", "2"]
        for node in fleet.agents:
            fleet.agents[node].session.expire()
            fleet.rounds(2)
            after = fleet.versions("db")
            assert all(after[n] == "2" for n in after if before[n] == "2"), "a node moved away from the tie's winner"
        assert set(fleet.versions("db").values()) == {"2"}
    finally:
        fleet.close()


# -- found by the spin model: a stale 'failed' entry must not make going down look free --------------
def test_a_node_whose_entry_still_says_failed_but_answers_costs_quorum() -> None:
    fleet = make_fleet(3, {"services": {"db": {"quorum": 3, "start": "run db"}}})
    try:
        fleet.world.bad.add(("db", "1"))
        fleet.world.running[("n1", "db")] = fleet.world.running[("n2", "db")] = "1x"  # only n3's db fails
        fleet.monitor("n3")
        assert fleet.operator.current("db")["n3"].state == FAILED
        fleet.world.bad.clear()  # n3's db answers again; its monitor has not looked yet
        fleet.stage("db", "2", at=2.0)
        fleet.deploy(("db", "2"))
        fleet.cycle("n3")
        assert ("n3", "db", "stop", "1") not in fleet.world.steps, "n3 took an answering service down"
        assert len(fleet.world.up("db")) == 3
    finally:
        fleet.close()


# -- 13: a malformed record read from ZooKeeper is logged and skipped -------------------------------------
def test_malformed_records_are_skipped_and_the_rollout_goes_on(fleet: SimFleet) -> None:
    writer = fleet.operator  # write garbage the way a broken tool would, straight into the tree
    writer._session.create("/dc/current/db/ghost", b"{not json")
    writer._session.create("/dc/deploy/d-9999999999", b"[1, 2]")
    writer._session.create("/dc/reports/plans/p-0000000077", b"\xff\xfe")
    writer._session.ensure_path("/dc/control/undo/n1")
    writer._session.create("/dc/control/undo/n1/u-0000000001", b"nope")
    fleet.stage("db", "2", at=2.0)
    name = fleet.deploy(("db", "2"))[0]
    for node in fleet.agents:
        agent = fleet.agents[node].agent
        assert agent is not None and agent.reports is not None
        agent.reports.answer_plans()
        agent.reports.serve_undo_requests()
    rounds_until(fleet, lambda: state(fleet, name) == DONE)
    assert set(fleet.versions("db").values()) == {"2"}


def test_a_slot_taken_at_no_cost_is_given_back_if_the_service_answers_before_the_stop() -> None:
    fleet = make_fleet(3, {"services": {"db": {"quorum": 3, "start": "run db"}}})
    try:
        fleet.world.bad.add(("db", "1"))
        fleet.world.running[("n1", "db")] = fleet.world.running[("n2", "db")] = "1x"  # only n3's db fails
        fleet.monitor("n3")
        fleet.stage("db", "2", at=2.0)
        fleet.deploy(("db", "2"))
        agent = fleet.agents["n3"].agent
        assert agent is not None
        publish = agent.presence.publish

        def recovering_publish(service: str, **kw: object) -> None:  # n3's db answers again right then
            publish(service, **kw)  # type: ignore[arg-type]
            if kw.get("state") == "restarting":
                fleet.world.bad.clear()

        agent.presence.publish = recovering_publish  # type: ignore[method-assign]
        fleet.cycle("n3")  # granted at no cost (n3 failed); by the stop its db answers: it must not stop it
        assert ("n3", "db", "stop", "1") not in fleet.world.steps
        assert len(fleet.world.up("db")) == 3 and fleet.operator.slots("db") == []
    finally:
        fleet.close()


# -- found by the chaos suite (seed 101): a head waiting for quorum must not hold back a down node --------
def test_a_down_node_behind_a_head_waiting_for_quorum_restarts_at_no_cost() -> None:
    fleet = make_fleet(3, {"services": {"db": {"quorum": 2, "start": "run db"}}})
    try:
        fleet.world.running.pop(("n3", "db"))  # n3's db is down (an operator's undo, a crash)
        fleet.monitor("n3")
        fleet.stage("db", "2", at=2.0)
        name = fleet.deploy(("db", "2"))[0]
        for node in ("n1", "n2", "n3"):  # n1 heads the queue and may not go down (2 online, quorum 2)
            fleet.cycle(node)
        rounds_until(fleet, lambda: state(fleet, name) == DONE)
        assert set(fleet.versions("db").values()) == {"2"}
    finally:
        fleet.close()


# -- a rollout that cannot go on says so on the deploy (the steward's look, rate-limited) ------------
def test_a_deploy_held_back_by_quorum_past_its_progress_deadline_is_marked_stalled_with_the_reason() -> None:
    import time

    catalog = {"services": {"db": {"quorum": 4, "start": "run db"}}}  # 4 of 4 online: nobody may go down
    fleet = make_fleet(4, catalog)
    try:
        fleet.stage("db", "2", at=2.0)
        name = fleet.deploy(("db", "2"))[0]
        entry = fleet.operator.deploy(name)
        assert entry is not None
        fleet.operator.update_deploy(entry.evolve(progress_deadline=0.2))
        fleet.rounds(2)
        entry = fleet.operator.deploy(name)
        assert entry is not None and entry.stalled_since is None, "stalled before its deadline passed"
        time.sleep(0.3)  # past the deadline: the next looks must see the stall
        rounds_until(fleet, lambda: (fleet.operator.deploy(name) or entry).stalled_since is not None, limit=10)
        stalled = fleet.operator.deploy(name)
        assert stalled is not None and stalled.state == PENDING
        assert stalled.message.startswith("stalled: no progress for") and "quorum" in stalled.message
        assert set(fleet.versions("db").values()) == {"1"}
    finally:
        fleet.close()


# -- found by the chaos suite (seed 306): a crash recovery granted at no cost must look again ----------
def test_a_recovery_granted_at_no_cost_gives_the_slot_back_if_the_service_answers_before_the_undo() -> None:
    fleet = make_fleet(3, {"services": {"db": {"quorum": 2, "start": "run db"}}})
    try:
        fleet.stage("db", "2", at=2.0)
        fleet.world.bad.add(("db", "2"))
        fleet.deploy(("db", "2"), max_failures=3)
        with crash.installed(crash.raise_at("db:checking")):
            fleet.cycle("n1")  # dies checking db@2, which fails its health check: db@2 runs, failing
        assert fleet.agents["n1"].agent is None and fleet.versions("db")["n1"] == "2"
        fleet.expire_dead_sessions()
        agent = fleet.start("n1")  # the interrupted change waits for a slot: db is failing, so at no cost
        publish = agent.presence.publish

        def mended_publish(service: str, **kw: object) -> None:  # db@2 answers again right then
            publish(service, **kw)  # type: ignore[arg-type]
            if kw.get("state") == "restarting":
                fleet.world.bad.clear()

        agent.presence.publish = mended_publish  # type: ignore[method-assign]
        fleet.monitor("n1")
        fleet.cycle("n1")
        assert ("n1", "db", "stop", "2") not in fleet.world.steps, "a recovery at no cost took down a service " \
                                                                   "that answered"
        assert fleet.operator.slots("db") == [] and len(fleet.world.up("db")) == 3
    finally:
        fleet.close()


# -- a deploy entry rewritten after it was queued ------------------------------------------------
@pytest.mark.parametrize("rewrite", ["version", "steps"])
def test_a_deploy_entry_rewritten_after_it_was_queued_is_refused_and_nothing_runs_it(
        fleet: SimFleet, rewrite: str) -> None:
    """Agents record progress on deploy entries, and ZooKeeper cannot limit a write to some fields:
    a credential that may do that could rewrite what an open entry asks for (another version,
    commands for every host to run).  The entry's seal, made with it, says it was rewritten."""
    fleet.stage("db", "2", at=2.0)
    fleet.stage("db", "3", at=3.0)
    fleet.operator.set_killswitch(Killswitch(message="hold while the entry is rewritten", by="test"))
    name = fleet.deploy(("db", "2"))[0]
    entry = fleet.operator.deploy(name)
    assert entry is not None and entry.seal
    changed = {"version": {"version": "3"},
               "steps": {"steps": ({"name": "own", "do": "command", "command": "touch /tmp/owned",
                                    "check": "none"},)}}[rewrite]
    fleet.operator.update_deploy(entry.evolve(**changed))  # what an agent credential could write
    fleet.operator.set_killswitch(None)
    fleet.rounds(3)
    refused = fleet.operator.deploy(name)
    assert refused is not None and refused.state == HALTED
    assert "rewritten after it was queued" in refused.message
    assert set(fleet.versions("db").values()) == {"1"}, "a node ran the rewritten entry"


def test_an_entry_as_queued_passes_its_seal_and_a_spec_digest_covers_what_runs() -> None:
    from zkdeploy.model import DeployEntry

    entry = DeployEntry(service="db", version="2", seal="s1")
    progress = entry.evolve(state=HALTED, message="x", failures=({"node": "n1"},), wave=1, progress_deadline=5.0)
    assert progress.spec_digest() == entry.spec_digest()  # progress is not covered
    for change in ({"version": "3"}, {"service": "web"}, {"steps": ({"do": "command"},)}, {"nodes": ("n1",)},
                   {"seal": "s2"}, {"max_failures": 3}):
        assert entry.evolve(**change).spec_digest() != entry.spec_digest(), change
