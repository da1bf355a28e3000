"""The deploy entry's lifecycle: the table, its one entry point, and the places that use it.

The CLI commands and the agents' bookkeeping run here against a small fake of
the Store's deploy-entry methods; the same commands against a real ZooKeeper
are in tests/integration/test_cli.py.
"""

from __future__ import annotations

import json
import re
from itertools import product
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings, strategies as st

from zkdeploy.agent import deploys
from zkdeploy.cli.context import Ctx
from zkdeploy.cli.main import cli
from zkdeploy.errors import ConflictError, DeployTransitionError
from zkdeploy.model import (
    ABORTED,
    DONE,
    HALTED,
    ONLINE,
    OPEN_DEPLOY_STATES,
    PAUSED,
    PENDING,
    RESTARTING,
    ROLLED_BACK,
    CurrentEntry,
    DeployEntry,
    DeployState,
)
from zkdeploy.policy.lifecycle import DEPLOY_TRANSITIONS, TERMINAL, Actor, can, next_states, transition

S = DeployState
OP, AG = Actor.OPERATOR, Actor.AGENT

#: every allowed (from, to, by), written out independently of the module's table
ALLOWED = {
    (S.PENDING, S.PENDING, AG), (S.PENDING, S.PENDING, OP), (S.PENDING, S.PAUSED, OP), (S.PENDING, S.HALTED, AG),
    (S.PENDING, S.ROLLED_BACK, AG), (S.PENDING, S.DONE, AG), (S.PENDING, S.ABORTED, OP),
    (S.PENDING, S.ABORTED, AG),
    (S.PAUSED, S.PAUSED, AG), (S.PAUSED, S.PENDING, OP), (S.PAUSED, S.HALTED, AG),
    (S.PAUSED, S.ROLLED_BACK, AG), (S.PAUSED, S.ABORTED, OP), (S.PAUSED, S.ABORTED, AG),
    (S.HALTED, S.HALTED, AG), (S.HALTED, S.PENDING, OP), (S.HALTED, S.ABORTED, OP), (S.HALTED, S.ABORTED, AG),
}
EVERY_REQUEST = list(product(S, S, Actor))
REFUSED = [r for r in EVERY_REQUEST if r not in ALLOWED]

DOC = Path(__file__).resolve().parents[2] / "docs" / "deploy-states.md"


def _entry(state: str = PENDING, **fields) -> DeployEntry:
    defaults = dict(name="d-0000000007", service="db", version="2", created=100.0, group="g1", zversion=3)
    return DeployEntry(state=state, **{**defaults, **fields})


# -- the table -----------------------------------------------------------------------------------
def test_the_table_is_the_allowed_moves() -> None:
    table = {(old, new, by) for old, moves in DEPLOY_TRANSITIONS.items() for new, move in moves.items()
             for by in move.by}
    assert table == ALLOWED
    assert set(DEPLOY_TRANSITIONS) == set(S)
    assert all(move.why for moves in DEPLOY_TRANSITIONS.values() for move in moves.values())


def test_terminal_states_are_the_closed_ones() -> None:
    assert {DONE, ABORTED, ROLLED_BACK} == TERMINAL
    assert set(OPEN_DEPLOY_STATES) == set(S) - TERMINAL
    for state in S:
        assert DeployEntry(state=state).is_open is (state not in TERMINAL)


def test_the_docs_list_every_move_of_the_table() -> None:
    rows = re.findall(r"^\| (\w+) \| (\w+) \| ([\w, ]+) \|", DOC.read_text(), re.M)
    documented = {(S(old), S(new), Actor(by.strip())) for old, new, bys in rows if old != "from"
                  for by in bys.split(",")}
    assert documented == ALLOWED


@pytest.mark.parametrize("old, new, by", sorted(ALLOWED))
def test_every_allowed_move_works(old: DeployState, new: DeployState, by: Actor) -> None:
    entry = _entry(old, failures=({"node": "n1"},))
    moved = transition(entry, new, by=by, message="why", at=1234.0)
    assert (moved.state, moved.message) == (new, "why")
    assert (moved.name, moved.zversion, moved.failures) == (entry.name, 3, entry.failures)  # still conditional
    assert can(entry, new, by=by)
    assert entry.state == old  # the entry itself is a value: unchanged


@pytest.mark.parametrize("old, new, by", REFUSED)
def test_every_other_move_is_refused_with_what_could_be_done(old: DeployState, new: DeployState,
                                                             by: Actor) -> None:
    entry = _entry(old)
    assert not can(entry, new, by=by)
    with pytest.raises(DeployTransitionError) as caught:
        transition(entry, new, by=by, message="why")
    exc = caught.value
    assert exc.exit_code == 2
    assert (exc.deploy, exc.current, exc.requested) == ("d-0000000007", old, new)
    assert set(exc.allowed) == {n for o, n, b in ALLOWED if o == old and b == by}
    text = str(exc)
    assert text.startswith(f"deploy d-0000000007 (db@2) is {old}")
    assert f"cannot become {new}" in text or f"cannot make it {new}" in text
    assert text.endswith("nothing was changed")
    for allowed in exc.allowed:
        assert allowed in text


def test_refusal_messages_read_as_an_operator_needs_them() -> None:
    with pytest.raises(DeployTransitionError) as caught:
        transition(_entry(DONE), PENDING, by=OP, message="resumed")
    assert str(caught.value) == ("deploy d-0000000007 (db@2) is done, which is final: it cannot become "
                                 "pending; nothing was changed")
    with pytest.raises(DeployTransitionError) as caught:
        transition(_entry(PAUSED), PAUSED, by=OP, message="paused")
    assert str(caught.value) == ("deploy d-0000000007 (db@2) is paused: an operator cannot make it paused; "
                                 "from paused an operator can make it pending or aborted; nothing was changed")


@pytest.mark.parametrize("state", sorted(TERMINAL))
def test_terminal_states_are_terminal(state: DeployState) -> None:
    assert next_states(state) == ()
    for new, by in product(S, Actor):
        with pytest.raises(DeployTransitionError, match=f"is {state}, which is final"):
            transition(_entry(state), new, by=by, message="")


def test_unknown_states_are_refused() -> None:
    with pytest.raises(DeployTransitionError, match="unknown state 'frozen'"):
        transition(_entry("frozen"), ABORTED, by=OP, message="")
    with pytest.raises(DeployTransitionError, match="'finished' is not a deploy state"):
        transition(_entry(PENDING), "finished", by=OP, message="")


# -- the bookkeeping that comes with a move --------------------------------------------------------
@pytest.mark.parametrize("new", sorted(TERMINAL))
def test_entering_a_terminal_state_sets_finished(new: DeployState) -> None:
    by = OP if new == ABORTED else AG
    assert transition(_entry(PENDING), new, by=by, message="", at=1234.5).finished == 1234.5
    assert transition(_entry(PENDING), new, by=by, message="").finished is not None  # now, by default


def test_open_states_have_no_finished() -> None:
    assert transition(_entry(PAUSED, finished=5.0), PENDING, by=OP, message="").finished is None
    assert transition(_entry(PENDING), PAUSED, by=OP, message="").finished is None


@pytest.mark.parametrize("new, by", [(PAUSED, OP), (HALTED, AG), (ABORTED, OP), (DONE, AG), (ROLLED_BACK, AG)])
def test_leaving_pending_clears_a_stall(new: DeployState, by: Actor) -> None:
    stalled = _entry(PENDING, stalled_since=50.0, message="stalled: no progress")
    assert transition(stalled, new, by=by, message="").stalled_since is None


def test_a_stall_is_recorded_and_cleared_only_on_a_pending_deploy() -> None:
    entry = _entry(PENDING)
    stalled = transition(entry, PENDING, by=AG, message="stalled: no progress for 700s", stalled_since=50.0)
    assert (stalled.state, stalled.stalled_since) == (PENDING, 50.0)
    assert transition(stalled, PENDING, by=AG, message="", stalled_since=None).stalled_since is None
    # a failure recorded within the budget keeps the stall
    kept = transition(stalled, PENDING, by=AG, message=stalled.message, failures=({"node": "n1"},))
    assert kept.stalled_since == 50.0 and kept.failures == ({"node": "n1"},)
    with pytest.raises(ValueError, match="only a pending deploy can be stalled"):
        transition(_entry(PAUSED), PAUSED, by=AG, message="", stalled_since=50.0)


def test_the_fields_a_move_owns_cannot_be_passed() -> None:
    for field in ("state", "finished", "name", "zversion"):
        with pytest.raises(TypeError, match=field):
            transition(_entry(PENDING), PAUSED, by=OP, message="", **{field: None})


def test_the_stored_json_is_unchanged_by_the_enum() -> None:
    moved = transition(_entry(PENDING), DONE, by=AG, message="done", at=7.0)
    assert moved.to_bytes() == _entry("done", message="done", finished=7.0).to_bytes()
    assert json.loads(moved.to_bytes())["state"] == "done"
    back = DeployEntry.from_bytes(moved.to_bytes(), 4, name=moved.name)
    assert back.state == DONE and not back.is_open and f"{back.state}" == "done"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(list(S)), st.sampled_from(list(Actor)),
                          st.one_of(st.none(), st.floats(0, 1e9))), max_size=30))
def test_random_requests_only_ever_follow_the_table(requests: list[tuple[DeployState, Actor, float | None]]) -> None:
    entry = _entry(PENDING)
    for new, by, stall in requests:
        old = entry.state
        changes = {"stalled_since": stall} if new == PENDING and stall is not None else {}
        try:
            entry = transition(entry, new, by=by, message=f"{by}: {new}", at=99.0, **changes)
        except DeployTransitionError:
            assert (old, new, by) not in ALLOWED
            continue
        assert (old, new, by) in ALLOWED
        assert entry.state == new
        assert (entry.finished == 99.0) if new in TERMINAL else entry.finished is None
        assert entry.stalled_since is None or new == PENDING
        if old in TERMINAL:
            pytest.fail(f"moved out of terminal {old}")


# -- the agents' bookkeeping (zkdeploy.agent.deploys) ----------------------------------------------
class FakeStore:
    """The deploy-entry part of the Store, with its conditional writes; /current as a dict."""

    def __init__(self, entries: list[DeployEntry], current: dict[str, CurrentEntry] | None = None,
                 stewards: bool = True) -> None:
        self.entries = {e.name: e for e in entries}
        self.current_entries = current or {}
        self.writes = 0
        self.closed = False
        self.stewards = stewards
        self.reports: dict[str, dict[str, dict]] = {}  # failures key -> node -> report

    def report_failure(self, entry: DeployEntry, node: str, report: dict) -> bool:
        mine = self.reports.setdefault(entry.failures_key, {})
        if node in mine:
            return False
        mine[node] = {**report, "node": node}
        return True

    def failure_reports(self, entry: DeployEntry, skip=()) -> dict[str, dict]:
        return {n: r for n, r in self.reports.get(entry.failures_key, {}).items() if n not in skip}

    def deploys(self, skip=()) -> list[DeployEntry]:
        return sorted((e for n, e in self.entries.items() if n not in skip), key=lambda e: e.name)

    def deploy(self, name: str) -> DeployEntry | None:
        return self.entries.get(name)

    def member_nodes(self, service: str) -> list[str]:
        return sorted(self.current_entries)

    def current_nodes(self, service: str) -> list[str]:
        return sorted(self.current_entries)

    def last_change(self, service: str) -> float | None:
        """As the availability epoch's last bump: here, the last change of an entry."""
        return max((e.since for e in self.current_entries.values()), default=None)

    def pins(self) -> list:
        return []

    def queue_length(self, service: str) -> int:
        return 0

    def slot_count(self, service: str) -> int:
        return 0

    def update_deploy(self, entry: DeployEntry) -> DeployEntry:
        self._check(entry)
        self.writes += 1
        stored = entry.evolve(zversion=entry.zversion + 1)
        self.entries[entry.name] = stored
        return stored

    def replace_with_rollback(self, failed: DeployEntry, rollback: DeployEntry, abort: list[DeployEntry]) -> str:
        for entry in [failed, *abort]:
            self._check(entry)
        for entry in [failed, *abort]:
            self.entries[entry.name] = entry.evolve(zversion=entry.zversion + 1)
        name = f"d-{max(int(n[2:]) for n in self.entries) + 1:010d}"  # the next in the queue
        self.entries[name] = rollback.evolve(name=name, zversion=0)
        self.writes += 1
        return name

    def _check(self, entry: DeployEntry) -> None:
        stored = self.entries.get(entry.name)
        if stored is None or stored.zversion != entry.zversion:
            raise ConflictError(f"deploy {entry.name} changed since it was read")

    def current(self, service: str) -> dict[str, CurrentEntry]:
        return dict(self.current_entries)

    def slots(self, service: str) -> list[str]:
        return []

    def queue(self, service: str) -> list[str]:
        return []

    def close(self) -> None:
        self.closed = True


def _fleet(version: str = "1", state: str = ONLINE, since: float = 0.0) -> dict[str, CurrentEntry]:
    return {f"n{i}": CurrentEntry(node=f"n{i}", version=version, state=state, since=since) for i in range(4)}


def test_a_failure_within_the_budget_is_recorded_and_keeps_the_state() -> None:
    store = FakeStore([_entry(PAUSED, max_failures=1, message="paused by alice")], _fleet())
    deploys.report_failure(store, "n1", "d-0000000007", "health check failed")
    entry = store.deploy("d-0000000007")
    assert (entry.state, entry.message) == (PAUSED, "paused by alice")
    assert [f["node"] for f in entry.failures] == ["n1"]


def test_a_failure_past_the_budget_halts_the_deploy() -> None:
    store = FakeStore([_entry(PENDING, max_failures=0, stalled_since=5.0)], _fleet())
    deploys.report_failure(store, "n1", "d-0000000007", "health check failed")
    entry = store.deploy("d-0000000007")
    assert entry.state == HALTED and entry.finished is None and entry.stalled_since is None
    assert entry.message == "1 node(s) failed (max_failures 0); last: n1: health check failed"
    deploys.report_failure(store, "n2", "d-0000000007", "timeout")  # a restart under way when it halted
    entry = store.deploy("d-0000000007")
    assert entry.state == HALTED and entry.message.endswith("last: n2: timeout")


def test_a_failure_past_the_budget_rolls_back_and_aborts_the_dependants() -> None:
    failing = _entry(PENDING, max_failures=0, on_failure="rollback", previous="1")
    dependant = _entry(PENDING, name="d-0000000008", service="web")
    other_request = _entry(PENDING, name="d-0000000009", service="web", group="g2")
    store = FakeStore([failing, dependant, other_request], _fleet())
    deploys.report_failure(store, "n1", "d-0000000007", "crashed")
    failed = store.deploy("d-0000000007")
    assert failed.state == ROLLED_BACK and failed.finished is not None
    assert "rolling back to 1; last: n1: crashed" in failed.message
    assert store.deploy("d-0000000008").state == ABORTED
    assert store.deploy("d-0000000008").message == "aborted: d-0000000007 failed"
    assert store.deploy("d-0000000009").state == PENDING
    rollback = store.deploys()[-1]
    assert (rollback.kind, rollback.version, rollback.previous, rollback.state) == ("rollback", "1", "2", PENDING)


def test_an_agent_that_may_not_write_the_entry_reports_its_own_failure_and_reads_the_halt_from_the_reports() -> None:
    store = FakeStore([_entry(PENDING, max_failures=0)], _fleet(), stewards=False)
    deploys.report_failure(store, "n1", "d-0000000007", "health check failed")
    entry = store.deploy("d-0000000007")
    assert store.writes == 0 and entry.state == PENDING and entry.failures == ()  # the entry is the stewards'
    judged = deploys.as_judged(store, entry, store.failure_reports(entry))
    assert judged.state == HALTED and [f["node"] for f in judged.failures] == ["n1"]
    assert judged.message.startswith("1 node(s) failed (max_failures 0); last: n1: health check failed")
    store.stewards = True  # a steward records what every agent already acts on
    deploys.judge(store, "d-0000000007")
    entry = store.deploy("d-0000000007")
    assert entry.state == HALTED and [f["node"] for f in entry.failures] == ["n1"]
    assert deploys.as_judged(store, entry, store.failure_reports(entry, skip={"n1"})) == entry


def test_a_failure_within_the_budget_read_from_the_reports_keeps_the_node_from_retrying_but_not_the_others() -> None:
    store = FakeStore([_entry(PENDING, max_failures=1)], _fleet(), stewards=False)
    deploys.report_failure(store, "n1", "d-0000000007", "health check failed")
    deploys.report_failure(store, "n1", "d-0000000007", "again")  # a node counts once
    entry = store.deploy("d-0000000007")
    judged = deploys.as_judged(store, entry, store.failure_reports(entry))
    assert judged.state == PENDING and [(f["node"], f["error"]) for f in judged.failures] == [
        ("n1", "health check failed")]


def test_a_failed_scenario_check_reported_halts_whatever_the_budget() -> None:
    store = FakeStore([_entry(PENDING, max_failures=3)], _fleet())
    deploys.report_failure(store, "n2", "d-0000000007", "check failed", halt=True)
    entry = store.deploy("d-0000000007")
    assert entry.state == HALTED and entry.message.startswith("a scenario check failed on n2")


def test_a_failure_on_a_closed_deploy_changes_nothing() -> None:
    store = FakeStore([_entry(DONE, finished=9.0)], _fleet())
    deploys.report_failure(store, "n1", "d-0000000007", "late")
    assert store.writes == 0 and store.deploy("d-0000000007").failures == ()


def test_completion_marks_done_with_finished() -> None:
    store = FakeStore([_entry(PENDING, message="")], _fleet("2"))
    deploys.maybe_complete(store, store.deploy("d-0000000007"))
    entry = store.deploy("d-0000000007")
    assert entry.state == DONE and entry.finished is not None


def test_only_a_pending_deploy_completes() -> None:
    store = FakeStore([_entry(PAUSED)], _fleet("2"))
    deploys.maybe_complete(store, store.deploy("d-0000000007"))
    assert store.writes == 0 and store.deploy("d-0000000007").state == PAUSED


def test_a_stall_is_recorded_then_cleared() -> None:
    store = FakeStore([_entry(PENDING, progress_deadline=10.0)], _fleet("1", RESTARTING, since=100.0))
    deploys.watch_progress(store, store.deploy("d-0000000007"), 2)
    entry = store.deploy("d-0000000007")
    assert entry.state == PENDING and entry.stalled_since == 100.0
    assert entry.message.startswith("stalled: no progress for ")
    store.current_entries = _fleet("2", ONLINE, since=4e9)  # progress (in the future: never stale)
    deploys.watch_progress(store, entry, 2)
    entry = store.deploy("d-0000000007")
    assert entry.stalled_since is None and entry.message == ""


def test_a_paused_deploy_does_not_stall() -> None:
    store = FakeStore([_entry(PAUSED, progress_deadline=10.0)], _fleet("1", since=100.0))
    deploys.watch_progress(store, store.deploy("d-0000000007"), 2)
    assert store.writes == 0


# -- the operator's commands -------------------------------------------------------------------
@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeStore:
    store = FakeStore([
        _entry(DONE, name="d-0000000001", finished=5.0),
        _entry(PENDING, name="d-0000000002"),
        _entry(PAUSED, name="d-0000000003", service="web"),
        _entry(HALTED, name="d-0000000004", max_failures=0, failures=({"node": "n1"}, {"node": "n2"})),
    ])
    monkeypatch.setattr(Ctx, "store", lambda self: store)
    return store


def _run(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_resume_of_a_done_deploy_is_refused_and_changes_nothing(fake: FakeStore) -> None:
    before = dict(fake.entries)
    result = _run("resume", "d-0000000001")
    assert result.exit_code == 2
    assert ("error: deploy d-0000000001 (db@2) is done, which is final: it cannot become pending; "
            "nothing was changed") in result.output
    assert fake.entries == before and fake.writes == 0


def test_pause_of_a_paused_deploy_says_what_an_operator_can_do(fake: FakeStore) -> None:
    result = _run("pause", "d-0000000003")
    assert result.exit_code == 2
    assert "is paused: an operator cannot make it paused; from paused an operator can make it " \
           "pending or aborted" in result.output
    assert fake.writes == 0


def test_commands_on_an_unknown_deploy_exit_2(fake: FakeStore) -> None:
    for args in (("resume", "d-0000000099"), ("pause", "d-0000000099"), ("abort", "d-0000000099", "--force")):
        result = _run(*args)
        assert result.exit_code == 2 and "no deploy d-0000000099" in result.output
    assert fake.writes == 0


def test_resume_of_a_halted_deploy_raises_its_budget_to_its_failures(fake: FakeStore) -> None:
    result = _run("resume", "d-0000000004")
    assert result.exit_code == 0 and "resumed d-0000000004" in result.output
    entry = fake.deploy("d-0000000004")
    assert (entry.state, entry.max_failures) == (PENDING, 2)
    assert entry.message.startswith("resumed by ")


def test_pause_all_and_abort_all_move_only_what_the_table_allows(fake: FakeStore) -> None:
    result = _run("pause", "--all")
    assert result.exit_code == 0 and result.output.split("\n")[:-1] == ["paused d-0000000002"]
    result = _run("abort", "--all", "--force")
    assert result.exit_code == 0
    assert result.output.split("\n")[:-1] == ["aborted d-0000000002", "aborted d-0000000003",
                                              "aborted d-0000000004"]
    states = {n: e.state for n, e in fake.entries.items()}
    assert states == {"d-0000000001": DONE, "d-0000000002": ABORTED, "d-0000000003": ABORTED,
                      "d-0000000004": ABORTED}
    assert all(e.finished is not None for e in fake.entries.values())
    assert fake.deploy("d-0000000001").finished == 5.0  # the done one was not touched
    assert _run("abort", "d-0000000002", "--force").exit_code == 2  # aborted is final
