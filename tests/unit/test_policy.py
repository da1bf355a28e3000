"""Pure decision logic: dependency order, quorum arithmetic, version choice, rollout progress."""

from __future__ import annotations

import pytest

from zkdeploy.errors import ConfigError, DependencyCycleError
from zkdeploy.model import ABORTED, DONE, FAILED, HALTED, ONLINE, PENDING, RESTARTING, CurrentEntry, DeployEntry
from zkdeploy.policy.order import dependency_order, find_cycle
from zkdeploy.policy.progress import active_deploy, explain, is_complete
from zkdeploy.policy.quorum import max_unavailable, may_go_down, parse_quorum, required_online
from zkdeploy.policy.versions import most_popular

# --------------------------------------------------------------------------- order


def test_find_cycle_returns_none_for_an_acyclic_graph() -> None:
    assert find_cycle({"web": ["api"], "api": ["db"], "db": []}) is None
    assert find_cycle({}) is None


def test_find_cycle_names_the_cycle_closed_on_its_first_node() -> None:
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]


def test_find_cycle_finds_a_cycle_below_an_acyclic_root() -> None:
    cycle = find_cycle({"web": ["api"], "api": ["cache"], "cache": ["api"], "db": []})
    assert cycle == ["api", "cache", "api"]


def test_find_cycle_reports_a_self_dependency() -> None:
    assert find_cycle({"a": ["a"]}) == ["a", "a"]


def test_find_cycle_ignores_edges_to_unknown_services() -> None:
    assert find_cycle({"web": ["nowhere"]}) is None


def test_dependency_order_puts_dependencies_first() -> None:
    graph = {"web": ["api"], "api": ["db"], "db": []}
    assert dependency_order(graph, ["web", "api", "db"]) == ["db", "api", "web"]


def test_dependency_order_keeps_transitive_order_through_services_not_wanted() -> None:
    # web -> api -> db: api is not deployed, but db must still come before web
    graph = {"web": ["api"], "api": ["db"], "db": []}
    assert dependency_order(graph, ["web", "db"]) == ["db", "web"]


def test_dependency_order_returns_only_wanted_services() -> None:
    graph = {"web": ["api"], "api": ["db"], "db": [], "cron": []}
    assert dependency_order(graph, ["web"]) == ["web"]


def test_dependency_order_breaks_ties_alphabetically_whatever_the_input_order() -> None:
    graph = {"zeta": [], "alpha": [], "mid": ["alpha"], "beta": []}
    expected = ["alpha", "beta", "zeta", "mid"]
    assert dependency_order(graph, ["zeta", "mid", "beta", "alpha"]) == expected
    assert dependency_order(dict(reversed(list(graph.items()))), ["alpha", "beta", "mid", "zeta"]) == expected


def test_dependency_order_ignores_duplicates_in_wanted() -> None:
    assert dependency_order({"a": [], "b": ["a"]}, ["b", "a", "b"]) == ["a", "b"]


def test_dependency_order_refuses_unknown_names() -> None:
    with pytest.raises(ConfigError) as info:
        dependency_order({"web": []}, ["web", "ghost", "phantom"])
    assert "unknown service(s): ghost, phantom" in str(info.value)
    assert info.value.exit_code == 2


def test_dependency_order_names_the_cycle() -> None:
    graph = {"a": ["b"], "b": ["a"], "c": []}
    with pytest.raises(DependencyCycleError) as info:
        dependency_order(graph, ["c"])
    assert info.value.cycle == ["a", "b", "a"]
    assert str(info.value) == "dependency cycle: a -> b -> a"
    assert info.value.exit_code == 2


# --------------------------------------------------------------------------- quorum


@pytest.mark.parametrize("value, parsed", [
    (0, 0),
    (3, 3),
    ("3", 3),
    (" 4 ", 4),
    ("66%", 0.66),
    (" 50 % ", 0.5),
    ("12.5%", 0.125),
    ("0%", 0.0),
    ("100%", 1.0),
])
def test_parse_quorum_accepts_counts_and_percentages(value: int | str, parsed: int | float) -> None:
    result = parse_quorum(value)
    assert result == pytest.approx(parsed)
    assert type(result) is type(parsed)


@pytest.mark.parametrize("value, words", [
    (True, "expected a count or a percentage"),
    (False, "expected a count or a percentage"),
    (-1, "must not be negative"),
    ("101%", "between 0% and 100%"),
    ("-5%", "expected a count or a percentage"),
    ("abc", "expected a count or a percentage"),
    ("", "expected a count or a percentage"),
    ("5%%", "expected a count or a percentage"),
    (1.5, "expected a count or a percentage"),
    (None, "expected a count or a percentage"),
])
def test_parse_quorum_refuses_bad_values(value: object, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_quorum(value)  # type: ignore[arg-type]
    assert words in str(info.value)
    assert info.value.exit_code == 2


@pytest.mark.parametrize("quorum, fleet, required", [
    ("67%", 6, 5),       # 4.02 rounds up
    ("66%", 6, 4),       # 3.96 rounds up
    ("50%", 4, 2),
    ("50%", 5, 3),
    ("70%", 10, 7),      # 0.7 * 10 is 7.000000000000001 in floating point
    ("30%", 10, 3),
    ("100%", 3, 3),
    ("0%", 3, 0),
    ("50%", 0, 0),
    (2, 10, 2),
    ("2", 10, 2),
    (5, 3, 5),           # a count is not capped by the fleet
])
def test_required_online_rounds_percentages_up(quorum: int | str, fleet: int, required: int) -> None:
    assert required_online(quorum, fleet) == required


def test_may_go_down_when_one_more_can_leave() -> None:
    decision = may_go_down(online=3, present=3, members=3, quorum=2, self_online=True)
    assert decision.allowed
    assert (decision.online, decision.required, decision.present) == (3, 2, 3)
    assert decision.reason == "3 online, quorum 2"


def test_may_not_go_down_below_quorum() -> None:
    decision = may_go_down(online=5, present=6, members=6, quorum="67%", self_online=True)
    assert not decision.allowed
    assert decision.required == 5
    assert decision.reason == "waiting for quorum: 5 online, quorum 5"


def test_a_node_that_is_not_online_costs_no_quorum() -> None:
    decision = may_go_down(online=0, present=3, members=3, quorum="100%", self_online=False)
    assert decision.allowed
    assert decision.required == 3
    assert "costs no quorum" in decision.reason


def test_may_go_down_with_percentage_quorum_exactly_at_the_edge() -> None:
    assert may_go_down(online=6, present=6, members=6, quorum="67%", self_online=True).allowed
    assert not may_go_down(online=4, present=4, members=4, quorum="100%", self_online=True).allowed


def test_a_percentage_is_of_the_members_and_an_absent_member_counts_as_down() -> None:
    # 67% of 6 members: a restarting when its session expired left 5 present, all online
    decision = may_go_down(online=5, present=5, members=6, quorum="67%", self_online=True)
    assert not decision.allowed
    assert (decision.required, decision.members, decision.absent) == (5, 6, 1)
    assert decision.reason == "waiting for quorum: 5 online of 6 members (1 absent), quorum 5"
    # of the nodes present it would have been 4, and one more could have gone down
    assert may_go_down(online=5, present=5, members=5, quorum="67%", self_online=True).allowed


def test_a_count_quorum_is_not_changed_by_absent_members() -> None:
    decision = may_go_down(online=3, present=3, members=5, quorum=2, self_online=True)
    assert decision.allowed and decision.required == 2
    assert decision.reason == "3 online of 5 members (2 absent), quorum 2"
    assert not may_go_down(online=2, present=4, members=6, quorum=2, self_online=True).allowed


def test_a_present_node_is_always_a_member() -> None:
    # a node that registered before its member record was read counts all the same
    decision = may_go_down(online=4, present=4, members=3, quorum="50%", self_online=True)
    assert (decision.members, decision.absent, decision.required) == (4, 0, 2) and decision.allowed


def test_a_node_that_is_not_online_may_restart_whatever_is_absent() -> None:
    decision = may_go_down(online=0, present=1, members=6, quorum="67%", self_online=False)
    assert decision.allowed and decision.required == 5


@pytest.mark.parametrize("online, present, members, allowed", [
    (6, 6, 6, True), (5, 5, 6, False), (5, 6, 6, False), (5, 5, 7, False), (6, 6, 7, True), (5, 5, 5, True),
])
def test_percentage_quorum_with_members(online: int, present: int, members: int, allowed: bool) -> None:
    assert may_go_down(online=online, present=present, members=members, quorum="67%",
                       self_online=True).allowed is allowed


@pytest.mark.parametrize("quorum, fleet, down", [
    ("67%", 6, 1),
    ("50%", 5, 2),
    (2, 5, 3),
    (10, 3, 0),
    ("0%", 4, 4),
    ("100%", 4, 0),
])
def test_max_unavailable(quorum: int | str, fleet: int, down: int) -> None:
    assert max_unavailable(quorum, fleet) == down


# --------------------------------------------------------------------------- versions


def test_most_popular_picks_the_version_most_nodes_run() -> None:
    assert most_popular(["1.0", "2.0", "1.0", None]) == "1.0"


def test_most_popular_tie_goes_to_the_most_recently_staged() -> None:
    assert most_popular(["1.0", "2.0"], {"1.0": 200.0, "2.0": 100.0}) == "1.0"


def test_most_popular_tie_prefers_a_version_with_a_staging_time() -> None:
    assert most_popular(["b", "a"], {"a": 1.0}) == "a"


def test_most_popular_remaining_tie_goes_to_the_larger_version_string() -> None:
    assert most_popular(["1.0", "2.0"]) == "2.0"
    assert most_popular(["2.0", "1.0"], {}) == "2.0"
    # string order, not numeric order: the same answer on every node
    assert most_popular(["10", "9"]) == "9"


@pytest.mark.parametrize("versions", [[], [None, None], ["", None]])
def test_most_popular_without_any_version(versions: list[str | None]) -> None:
    assert most_popular(versions) is None


# --------------------------------------------------------------------------- progress


def _deploy(seq: int, state: str = PENDING, version: str = "2.0", message: str = "") -> DeployEntry:
    return DeployEntry(name=f"deploy-{seq:010d}", service="web", version=version, state=state, message=message)


def _entry(node: str, version: str | None, state: str = ONLINE, phase: str = "idle", detail: str = "") -> CurrentEntry:
    return CurrentEntry(node=node, version=version, state=state, phase=phase, detail=detail)


def test_active_deploy_is_the_oldest_open_entry() -> None:
    deploys = [_deploy(3), _deploy(1, DONE), _deploy(2, HALTED), _deploy(4, ABORTED)]
    active = active_deploy(deploys)
    assert active is not None and active.name == "deploy-0000000002"


def test_active_deploy_is_none_when_nothing_is_open() -> None:
    assert active_deploy([]) is None
    assert active_deploy([_deploy(1, DONE), _deploy(2, ABORTED)]) is None


def test_is_complete_when_every_node_is_online_at_the_version() -> None:
    entries = {"n1": _entry("n1", "2.0"), "n2": _entry("n2", "2.0")}
    assert is_complete(entries, "2.0")


@pytest.mark.parametrize("entries, slots", [
    ({}, ()),
    ({"n1": _entry("n1", "2.0"), "n2": _entry("n2", "1.0")}, ()),
    ({"n1": _entry("n1", "2.0"), "n2": _entry("n2", "2.0", RESTARTING)}, ()),
    ({"n1": _entry("n1", "2.0")}, ("n1",)),
])
def test_is_not_complete(entries: dict[str, CurrentEntry], slots: tuple[str, ...]) -> None:
    assert not is_complete(entries, "2.0", slots)


def test_explain_without_a_deploy() -> None:
    assert explain(None, {}, 1, [], []) == "no rollout under way"


def test_explain_killswitch_comes_first() -> None:
    entries = {"n1": _entry("n1", "1.0")}
    assert explain(_deploy(1), entries, 1, [], [], killswitch="maintenance") == \
        "stopped by the killswitch: maintenance"


def test_explain_halted_deploy() -> None:
    assert explain(_deploy(1, HALTED, message="2 failures"), {}, 1, [], []) == \
        "halted: 2 failures (resume or abort it)"
    assert explain(_deploy(1, HALTED), {}, 1, [], []) == "halted: too many failures (resume or abort it)"


def test_explain_finished_deploy_gives_its_state() -> None:
    assert explain(_deploy(1, DONE), {}, 1, [], []) == "done"


def test_explain_service_without_nodes() -> None:
    assert explain(_deploy(1), {}, 1, [], []) == "no node runs this service"


def test_explain_complete() -> None:
    entries = {"n1": _entry("n1", "2.0"), "n2": _entry("n2", "2.0")}
    assert explain(_deploy(1), entries, 1, [], []) == "complete"


def test_explain_restarting_nodes_with_quorum() -> None:
    entries = {
        "n1": _entry("n1", "2.0"),
        "n2": _entry("n2", "1.0", RESTARTING, "stopping"),
        "n3": _entry("n3", "1.0", RESTARTING, "switching"),
    }
    assert explain(_deploy(1), entries, "67%", ["n3", "n2"], []) == "restarting n2, n3; 1 online, quorum 3"
    assert explain(_deploy(1), entries, None, ["n2"], []) == "restarting n2; 1 online"


def test_explain_waiting_for_quorum_quotes_the_node() -> None:
    detail = "waiting for quorum: 2 online, quorum 2"
    entries = {
        "n1": _entry("n1", "2.0"),
        "n2": _entry("n2", "1.0", ONLINE, "waiting", detail),
        "n3": _entry("n3", "1.0", FAILED),
    }
    assert explain(_deploy(1), entries, 2, [], []) == detail


def test_explain_counts_absent_members_in_the_quorum() -> None:
    entries = {"n1": _entry("n1", "2.0"), "n2": _entry("n2", "1.0", RESTARTING, "stopping"),
               "n3": _entry("n3", "1.0")}
    assert explain(_deploy(1), entries, "67%", ["n2"], [], members={"n1", "n2", "n3", "n4"}) == \
        "restarting n2; 2 online of 4 members (1 absent), quorum 3"
    assert explain(_deploy(1), entries, None, ["n2"], [], members={"n4"}) == \
        "restarting n2; 2 online of 4 members (1 absent)"
    assert explain(_deploy(1), {}, 1, [], [], members={"n4", "n5"}) == "no member is present (absent: n4, n5)"


def test_explain_fetching() -> None:
    entries = {"n1": _entry("n1", "1.0", phase="fetching"), "n2": _entry("n2", "1.0", phase="fetching"),
               "n3": _entry("n3", "2.0")}
    assert explain(_deploy(1), entries, 1, [], []) == "fetching the payload on 2 node(s): n1, n2"


def test_explain_nodes_not_online() -> None:
    entries = {"n1": _entry("n1", "2.0"), "n2": _entry("n2", "1.0", FAILED), "n3": _entry("n3", None, "stopped")}
    assert explain(_deploy(1), entries, 1, [], []) == "waiting for n2, n3 (2 node(s) not online)"


def test_explain_queued_nodes() -> None:
    entries = {"n1": _entry("n1", "2.0"), "n2": _entry("n2", "1.0"), "n3": _entry("n3", "1.0")}
    assert explain(_deploy(1), entries, "50%", [], ["n2", "n3"]) == "2 node(s) queued to restart; 3 online, quorum 2"


def test_explain_progress_otherwise() -> None:
    entries = {"n1": _entry("n1", "2.0"), "n2": _entry("n2", "1.0"), "n3": _entry("n3", "1.0")}
    assert explain(_deploy(1), entries, 1, [], []) == "1/3 nodes at 2.0"
