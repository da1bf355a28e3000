"""Model-based test of the rollout protocol: several agents' real decision code, random interleavings.

Hypothesis drives a fleet of real agents (``zkdeploy.testing.simfleet``: the
agent's cycle, slots, restarts and journal over an in-memory ZooKeeper and
simulated machines) through random interleavings of their cycles and health
checks, session expiries, lost replies, connection losses, crashes at any
step of a restart, agents coming back, and operator actions (pause, resume,
killswitch).  After every step, and at the instant of every step that takes a
service down, it checks the invariants of docs/protocol.md:

- never fewer than ``quorum`` nodes of a service up and healthy through
  zkdeploy's own actions;
- no service is stopped without a live slot owned by the agent's session;
- dependency order: no web node leaves the old release before the db deploy is done;
- no queue or slot node outlives the step that made it (only a dead agent's
  session, not yet expired, may still hold one);
- once faults stop, every deploy that was not aborted or halted finishes.

``ZKDEPLOY_MODEL_EXAMPLES`` sets the number of examples (CI runs a bounded,
fixed set; ``scripts/model_check`` runs it longer, with new random examples:
``ZKDEPLOY_MODEL_RANDOM=1``).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from zkdeploy import crash
from zkdeploy.model import ABORTED, DONE, HALTED, PAUSED, PENDING, ROLLED_BACK, Killswitch
from zkdeploy.testing.simfleet import SimFleet

EXAMPLES = int(os.environ.get("ZKDEPLOY_MODEL_EXAMPLES", "60"))
STEPS = int(os.environ.get("ZKDEPLOY_MODEL_STEPS", "60"))

CRASH_POINTS = ["*:draining", "*:stopping", "*:switching", "*:starting", "*:checking",
                "1:before", "1:after", "2:before", "2:after", "3:before", "3:after", "4:before", "end",
                "undo:*:before", "undo:*:after"]
WRITES = ["create", "set", "delete", "commit", None]


class FleetModel(RuleBasedStateMachine):
    """A fleet rolling db@2 then web@2 (web depends on db) while things go wrong."""

    fleet: SimFleet

    @initialize(size=st.integers(3, 5), db_down=st.integers(1, 2), web_down=st.integers(1, 2),
                bad=st.sampled_from([None, None, "db", "web"]), max_failures=st.integers(0, 2),
                on_failure=st.sampled_from(["pause", "rollback"]))
    def build(self, size: int, db_down: int, web_down: int, bad: str | None = None, max_failures: int = 0,
              on_failure: str = "pause") -> None:
        self.nodes = [f"n{i}" for i in range(1, size + 1)]
        self.quorum = {"db": max(1, size - db_down), "web": max(1, size - web_down)}
        catalog = {"services": {
            "db": {"quorum": self.quorum["db"], "start": "run db"},
            "web": {"quorum": self.quorum["web"], "start": "run web", "depends_on": ["db"]},
        }}
        self.fleet = SimFleet(self.nodes, catalog)
        self.violations: list[str] = []
        for service in ("db", "web"):
            self.fleet.stage(service, "1", at=1.0)
            for node in self.nodes:
                self.fleet.install(node, service, "1")
        self.fleet.world.on_step = self._check_step
        self.fleet.start_all()
        self.fleet.rounds(1)
        for service in ("db", "web"):
            self.fleet.stage(service, "2", at=2.0)
        if bad is not None:
            self.fleet.world.bad.add((bad, "2"))  # a release that fails its checks everywhere
        self.deploys = self.fleet.deploy(("db", "2"), ("web", "2"), previous={"db": "1", "web": "1"},
                                         max_failures=max_failures, on_failure=on_failure)

    def teardown(self) -> None:
        fleet = getattr(self, "fleet", None)
        if fleet is None:
            return
        try:
            self._heal_and_finish()
        finally:
            fleet.close()

    # -- the instant of a step ---------------------------------------------------------
    def _check_step(self, node: str, service: str, step: str) -> None:
        world = self.fleet.world
        if step == "start" and service == "web" and world.pending_start == "2":
            db = self.fleet.operator.deploy(self.deploys[0])
            if db is None or db.state != DONE:
                self.violations.append(f"{node} started web@2 while the db deploy is {db.state if db else 'gone'}")
        if step != "stop" or (node, service) not in world.running:
            return
        sim = self.fleet.agents[node]
        ensemble = self.fleet.ensemble
        slot = f"/dc/slots/{service}/{node}/slot"
        owner = ensemble.dump().get(slot, (b"", None))[1]
        if sim.session is None or owner != sim.session.session_id or sim.session.state != "connected":
            self.violations.append(f"{node} stopped {service} without a live slot of its own session")
        others = [n for n in world.up(service) if n != node]
        if len(others) < self.quorum[service]:
            self.violations.append(f"{node} stopped {service} leaving {len(others)} up, quorum {self.quorum[service]}")

    # -- agents --------------------------------------------------------------------------
    @rule(i=st.integers(0, 4))
    def cycle(self, i: int) -> None:
        self.fleet.cycle(self.nodes[i % len(self.nodes)])

    @rule(i=st.integers(0, 4))
    def monitor(self, i: int) -> None:
        self.fleet.monitor(self.nodes[i % len(self.nodes)])

    @rule(i=st.integers(0, 4), point=st.sampled_from(CRASH_POINTS))
    def crash_in_cycle(self, i: int, point: str) -> None:
        """The agent's next cycle dies at ``point`` if it gets there (SIGKILL, in-process)."""
        with crash.installed(crash.raise_at(point)):
            self.fleet.cycle(self.nodes[i % len(self.nodes)])

    @rule(i=st.integers(0, 4))
    def agent_returns(self, i: int) -> None:
        node = self.nodes[i % len(self.nodes)]
        if self.fleet.agents[node].agent is None:
            self.fleet.start(node)

    # -- the network ------------------------------------------------------------------------
    @rule(i=st.integers(0, 4))
    def session_expires(self, i: int) -> None:
        sim = self.fleet.agents[self.nodes[i % len(self.nodes)]]
        if sim.session is not None:
            sim.session.expire()

    @rule(i=st.integers(0, 4), op=st.sampled_from(WRITES))
    def reply_lost(self, i: int, op: str | None) -> None:
        sim = self.fleet.agents[self.nodes[i % len(self.nodes)]]
        if sim.session is not None:
            sim.session.lose_next_reply(1, op)

    @rule()
    def time_passes(self) -> None:
        """Long enough for the server to expire the sessions of dead agents."""
        self.fleet.expire_dead_sessions()

    # -- the operator --------------------------------------------------------------------------
    @rule(name=st.integers(0, 1))
    def pause(self, name: int) -> None:
        self._set_state(self.deploys[name], PENDING, PAUSED)

    @rule(name=st.integers(0, 1))
    def resume(self, name: int) -> None:
        self._set_state(self.deploys[name], PAUSED, PENDING)

    @rule(name=st.integers(0, 1))
    def abort(self, name: int) -> None:
        entry = self.fleet.operator.deploy(self.deploys[name])
        if entry is not None and entry.is_open:
            self.fleet.operator.update_deploy(entry.evolve(state=ABORTED))

    @rule()
    def rollback_db(self) -> None:
        """What ``zkdeploy rollback db`` does: abort the open deploys of db, queue db@1 as a rollback."""
        for entry in self.fleet.operator.deploys():
            if entry.service == "db" and entry.is_open:
                self.fleet.operator.update_deploy(entry.evolve(state=ABORTED))
        self.deploys.append(self.fleet.deploy(("db", "1"))[0])

    @rule(on=st.booleans())
    def killswitch(self, on: bool) -> None:
        self.fleet.operator.set_killswitch(Killswitch(message="model", by="test") if on else None)

    def _set_state(self, name: str, old: str, new: str) -> None:
        entry = self.fleet.operator.deploy(name)
        if entry is not None and entry.state == old:
            self.fleet.operator.update_deploy(entry.evolve(state=new))

    # -- after every step -------------------------------------------------------------------------
    @invariant()
    def no_violation(self) -> None:
        assert not self.violations, self.violations

    @invariant()
    def quorum_holds(self) -> None:
        if not hasattr(self, "fleet"):
            return
        for service, quorum in self.quorum.items():
            up = self.fleet.world.up(service)
            assert len(up) >= quorum, f"{service}: {len(up)} up ({up}), quorum {quorum}"

    @invariant()
    def no_orphaned_queue_or_slot_node(self) -> None:
        if not hasattr(self, "fleet"):
            return
        live = {session.session_id: sim for sim in self.fleet.agents.values() if sim.session is not None
                for session in (sim.session, *sim.session.twins)}  # a queue place has a session of its own
        for path, (_data, owner) in self.fleet.ensemble.dump().items():
            parts = path.split("/")  # /dc/locks/<s>/queue/<q> and /dc/slots/<s>/<node>/slot
            if len(parts) != 6 or ((parts[2], parts[4]) != ("locks", "queue") and parts[2] != "slots"):
                continue
            service, kind = parts[3], parts[2]
            sim = live.get(owner)
            if sim is None:
                continue  # a dead agent's session, not expired yet: it goes with the session
            if kind == "slots":
                raise AssertionError(f"{path}: a slot outlived the restart that took it")
            assert sim.agent is not None and service in sim.agent.cycle.pending, \
                f"{path}: a queue node of {sim.node} that no pending restart owns"

    # -- once the faults stop -----------------------------------------------------------------------
    def _heal_and_finish(self) -> None:
        fleet = self.fleet
        fleet.world.on_step = self._check_step
        fleet.operator.set_killswitch(None)
        for entry in fleet.operator.deploys():
            self._set_state(entry.name, PAUSED, PENDING)
        for sim in fleet.agents.values():
            if sim.session is not None and sim.session.state != "connected":
                sim.session.reconnect()
        fleet.expire_dead_sessions()
        for node, sim in fleet.agents.items():
            if sim.agent is None:
                fleet.start(node)
        for _ in range(40):
            fleet.rounds(1)
            for node in self.nodes:
                fleet.monitor(node)
            if self._settled() and self._converged() and self._at_target_if_done():
                break
        assert not self.violations, self.violations
        states = {e.name: (e.service, e.version, e.state, e.message) for e in fleet.operator.deploys()}
        assert self._settled(), f"a deploy neither finished nor was stopped once faults stopped: {states}"
        assert self._converged(), f"not every node runs a healthy release: {fleet.world.running}; {states}"
        if all(s == DONE for _, _, s, _ in states.values()):
            for service in ("db", "web"):
                assert set(fleet.versions(service).values()) == {"2"}, fleet.versions(service)
        for entry in fleet.operator.deploys():
            for failure in entry.failures:  # a node never keeps a release that failed on it
                assert fleet.world.running.get((failure["node"], entry.service)) != entry.version or \
                    (entry.service, entry.version) not in fleet.world.bad, (failure, entry)

    def _settled(self) -> bool:
        """Every deploy finished or was stopped; one halted (past its failure budget) holds the
        ones queued after it until an operator resumes or aborts it."""
        for entry in self.fleet.operator.deploys():
            if entry.state == HALTED:
                return True
            if entry.state not in (DONE, ABORTED, ROLLED_BACK):
                return False
        return True

    def _at_target_if_done(self) -> bool:
        """When every deploy is done, every node runs version 2 (a node that returns converges)."""
        if not all(e.state == DONE for e in self.fleet.operator.deploys()):
            return True
        return all(set(self.fleet.versions(s).values()) == {"2"} for s in ("db", "web"))

    def _converged(self) -> bool:
        """Every service on every node runs and passes its checks."""
        world = self.fleet.world
        return all(world.healthy(node, service) for node in self.nodes for service in ("db", "web"))


#: CI runs a fixed set of examples (reproducible); ``scripts/model_check`` explores new ones each run
RANDOM = os.environ.get("ZKDEPLOY_MODEL_RANDOM") == "1"

FleetModel.TestCase.settings = settings(max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
                                        derandomize=not RANDOM, database=None if not RANDOM else settings().database,
                                        suppress_health_check=list(HealthCheck))
test_fleet_model = pytest.mark.timeout(1800)(FleetModel.TestCase)
