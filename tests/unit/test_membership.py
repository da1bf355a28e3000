"""A percentage quorum is a share of the service's members, not of the nodes present (issue 9, scenario 3)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from zkdeploy import crash
from zkdeploy.errors import ConflictError
from zkdeploy.model import DONE
from zkdeploy.testing.simfleet import SimFleet

NODES = ["a", "b", "c", "d", "e", "f"]
CATALOG = {"services": {"db": {"quorum": "67%", "start": "run db"}}}


def crash_a_while_restarting(fleet: SimFleet) -> list[int]:
    """Deploy db@2; a takes its slot, stops db and dies while switching (its service down, its
    session alive), then the server expires a's session: its /current entry and slot vanish while
    a is still down.  Returns the list that collects, at every stop, how many nodes still answer."""
    fleet.stage("db", "2", at=2.0)
    fleet.deploy(("db", "2"))
    with crash.installed(crash.raise_at("db:switching")):
        fleet.cycle("a")
    assert fleet.agents["a"].agent is None and "a" not in fleet.world.up("db")
    fleet.expire_dead_sessions()
    assert "a" not in fleet.operator.current("db") and fleet.operator.slots("db") == []
    answering: list[int] = []

    def on_step(node: str, service: str, step: str) -> None:
        if step == "stop":
            answering.append(len([n for n in fleet.world.up(service) if n != node]))

    fleet.world.on_step = on_step
    return answering


def rounds_until_done(fleet: SimFleet, limit: int = 30) -> None:
    for _ in range(limit):
        if all(d.state == DONE for d in fleet.operator.deploys()):
            return
        fleet.rounds(1)
    assert [d.state for d in fleet.operator.deploys()] == [DONE]


@pytest.fixture
def fleet() -> Iterator[SimFleet]:
    fleet = SimFleet(NODES, CATALOG)
    fleet.stage("db", "1", at=1.0)
    for node in NODES:
        fleet.install(node, "db", "1")
    fleet.start_all()
    fleet.rounds(1)
    yield fleet
    fleet.close()


def test_a_member_whose_entry_vanished_while_down_still_counts_against_the_quorum(fleet: SimFleet) -> None:
    assert fleet.world.up("db") == NODES
    answering = crash_a_while_restarting(fleet)
    # 67% of 6 members is 5: with a down, nobody else may go down (67% of the 5 present would allow it)
    fleet.rounds(3)
    assert answering == [] and fleet.world.up("db") == NODES[1:]
    request = fleet.agents["b"].agent.cycle.pending["db"].request
    assert request.reason == "waiting for quorum: 5 online of 6 members (1 absent), quorum 5"
    assert sorted(fleet.operator.members("db")) == NODES
    # a comes back: it finishes its restart, then the others go one at a time
    fleet.start("a")
    rounds_until_done(fleet)
    assert answering and min(answering) >= 5
    assert set(fleet.versions("db").values()) == {"2"} and fleet.world.up("db") == NODES


def test_forgetting_a_member_that_left_for_good_lets_the_rollout_go_on(fleet: SimFleet) -> None:
    answering = crash_a_while_restarting(fleet)
    with pytest.raises(ConflictError, match="b is present"):
        fleet.operator.forget_member("db", "b")
    assert fleet.operator.forget_member("db", "a")  # the operator: a is gone for good
    assert not fleet.operator.forget_member("db", "a")
    rounds_until_done(fleet)
    assert answering and min(answering) >= 4  # 67% of the 5 members left
    assert sorted(fleet.operator.members("db")) == NODES[1:]
    assert fleet.world.up("db") == NODES[1:] and fleet.versions("db")["b"] == "2"


def test_registration_records_members_and_refreshes_last_seen(fleet: SimFleet) -> None:
    first = fleet.operator.members("db")
    assert sorted(first) == NODES and all(m.first_seen == m.last_seen > 0 for m in first.values())
    fleet.crash("c")
    fleet.expire_dead_sessions()
    assert "c" in fleet.operator.members("db")  # absent, still a member
    fleet.start("c")
    fleet.cycle("c")  # registers its new session
    again = fleet.operator.members("db")["c"]
    assert again.first_seen == first["c"].first_seen and again.last_seen >= first["c"].last_seen
    assert again.zversion > first["c"].zversion
