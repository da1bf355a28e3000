"""The live views (zkdeploy.cli.frames, zkdeploy.cli.live) on hand-made looks at a fleet: what a
row counts, which nodes it names as holding a rollout back and why, the estimate of the time
left, and the three ways a frame is shown (a terminal picture, plain lines, JSON lines)."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from rich.console import Console

from zkdeploy.cli import live
from zkdeploy.cli.frames import (
    IDLE,
    STALLED,
    Estimator,
    Row,
    deploys_frame,
    span,
    status_frame,
)
from zkdeploy.model import DeployEntry

T0 = 1_700_000_000.0


def node(version: str, state: str = "online", phase: str = "idle", detail: str = "") -> dict[str, Any]:
    return {"version": version, "state": state, "phase": phase, "detail": detail}


def fleet(*, killswitch: dict[str, Any] | None = None, deploy_state: str = "pending",
          stalled_since: float | None = None, failures: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    """What fleet_status returns for db (5 members: 2 at version 2, n3 restarting, n4 failed, n5 absent)
    under deploy d-0000000007, and web, at rest on version 1 (n3 failed its health check)."""
    deploy = {"name": "d-0000000007", "service": "db", "version": "2", "state": deploy_state, "created": T0,
              "stalled_since": stalled_since, "failures": list(failures), "nodes": []}
    return {
        "killswitch": killswitch, "active_deploy": deploy, "queue": [deploy],
        "services": [
            {"service": "db", "target": "2", "waiting_for": "restarting n3; 2 online of 5 members",
             "node_states": {"n1": node("2"), "n2": node("2"),
                             "n3": node("1", "restarting", "starting", "waiting for the health checks"),
                             "n4": node("1", "failed", "idle", "exited with status 3")},
             "absent": [{"node": "n5", "first_seen": T0 - 100, "last_seen": T0 - 50}],
             "versions": [{"version": "2", "state": "online", "nodes": 2}]},
            {"service": "web", "target": None, "waiting_for": "no rollout under way",
             "node_states": {"n1": node("1"), "n2": node("1"), "n3": node("1", "failed", "idle", "port closed")},
             "absent": [], "versions": [{"version": "1", "state": "online", "nodes": 3}]},
        ],
    }


def entry(state: str = "pending", **kw: Any) -> DeployEntry:
    return DeployEntry(name="d-0000000007", service="db", version="2", state=state, created=T0, **kw)


# -- frames ---------------------------------------------------------------------------------------
def test_a_service_row_counts_members_at_the_target_and_names_who_holds_it_back() -> None:
    db, web = status_frame(fleet(), T0 + 60).rows
    assert (db.service, db.deploy, db.state, db.done, db.total, db.target) == ("db", "d-0000000007", "pending", 2,
                                                                               5, "2")
    assert [(h.node, h.severe) for h in db.holding] == [("n3", True), ("n4", True), ("n5", True)]
    reasons = dict((h.node, h.reason) for h in db.holding)
    assert reasons["n3"] == "1 restarting, starting: waiting for the health checks"
    assert reasons["n4"] == "1 failed: exited with status 3"
    assert reasons["n5"].startswith("absent")
    assert db.waiting_for == "restarting n3; 2 online of 5 members"
    # at rest: measured against the version most nodes run
    assert (web.state, web.target, web.done, web.total, web.deploy) == (IDLE, "1", 2, 3, None)
    assert [(h.node, h.reason, h.severe) for h in web.holding] == [("n3", "1 failed: port closed", True)]


def test_nodes_at_work_come_before_idle_ones_and_are_not_severe() -> None:
    status = fleet()
    status["services"][0]["node_states"].update(n1=node("1"), n2=node("1", "online", "fetching", "12%"))
    [db] = deploys_frame(status, [entry()], T0).rows
    assert [(h.node, h.severe) for h in db.holding] == [("n3", True), ("n4", True), ("n5", True), ("n2", False),
                                                        ("n1", False)]
    assert db.holding[3].reason == "1 online, fetching: 12%"


def test_a_deploy_queued_behind_another_names_only_its_failed_and_absent_nodes() -> None:
    status = fleet()
    status["active_deploy"] = {**status["active_deploy"], "name": "d-0000000006"}  # another deploy rolls
    status["services"][0]["node_states"]["n2"] = node("1", detail="online at 1")
    [db] = deploys_frame(status, [entry()], T0).rows
    assert [h.node for h in db.holding] == ["n3", "n4", "n5"]
    status["active_deploy"] = {**status["active_deploy"], "name": "d-0000000007"}
    [db] = deploys_frame(status, [entry()], T0).rows
    assert (db.holding[-1].node, db.holding[-1].reason) == ("n2", "1 online, not restarted yet")


def test_a_stalled_deploy_and_a_nodes_failed_restart_say_so() -> None:
    frame = deploys_frame(fleet(), [entry(stalled_since=T0 + 30, failures=({"node": "n4", "error": "boom"},))],
                          T0 + 60)
    [db] = frame.rows
    assert db.state == STALLED
    assert dict((h.node, h.reason) for h in db.holding)["n4"] == "failed its restart: boom"


def test_a_finished_deploy_names_no_node_and_says_how_it_ended() -> None:
    [db] = deploys_frame(fleet(), [entry("aborted", message="by ops", finished=T0 + 90)], T0 + 120).rows
    assert (db.state, db.holding, db.waiting_for, db.ended) == ("aborted", (), "aborted: by ops", T0 + 90)


def test_only_the_nodes_a_deploy_selected_count() -> None:
    [db] = deploys_frame(fleet(), [entry(nodes=("n1", "n3"))], T0).rows
    assert (db.done, db.total, [h.node for h in db.holding]) == (1, 2, ["n3"])


# -- the estimate of the time left ------------------------------------------------------------------
def row(done: int, total: int = 10, started: float | None = T0, state: str = "pending") -> Row:
    return Row(service="db", target="2", deploy="d-1", state=state, done=done, total=total, started=started,
               ended=None, waiting_for="")


def test_the_estimate_follows_the_pace_seen_while_watching() -> None:
    estimate = Estimator()
    assert estimate.left(row(0), T0 + 10) is None  # nothing moved yet: unknown
    assert estimate.left(row(2), T0 + 30) == pytest.approx(8 / (2 / 20))  # 2 nodes in the 20 s watched
    assert estimate.left(row(10), T0 + 40) == 0.0


def test_watching_a_rollout_half_done_starts_from_its_own_pace_until_nodes_move() -> None:
    estimate = Estimator()
    assert estimate.left(row(5), T0 + 100) == pytest.approx(100.0)  # 5 in the 100 s since it began
    assert estimate.left(row(5, state="halted"), T0 + 200) is not None
    assert estimate.left(row(5, state="aborted"), T0 + 200) is None  # a closed deploy has nothing left


@pytest.mark.parametrize("seconds, text", [(None, "?"), (0, "0s"), (59.4, "59s"), (61, "1m01s"), (3725, "1h02m"),
                                           (90000, "1d01h")])
def test_spans(seconds: float | None, text: str) -> None:
    assert span(seconds) == text


# -- shown three ways ---------------------------------------------------------------------------------
def terminal() -> Console:
    return Console(file=io.StringIO(), force_terminal=True, width=160, color_system="truecolor", record=True)


def test_on_a_terminal_the_picture_has_bars_colours_times_and_reasons() -> None:
    console = terminal()
    frame = status_frame(fleet(killswitch={"message": "incident 7", "by": "ops@h"}), T0 + 65)
    console.print(live.render(frame, "zkdeploy status --watch", {"db/d-0000000007": 40.0, "web/-": None}))
    text = console.export_text(clear=False)
    assert "KILLSWITCH ON: incident 7 (by ops@h)" in text
    assert "━" in text  # the progress bars
    assert "2/5" in text and "1m05s" in text and "~40s" in text
    assert "waiting for the health checks" in text and "exited with status 3" in text
    styled = console.export_text(styles=True)
    assert "\x1b[" in styled  # coloured


def test_on_an_80_column_terminal_nothing_is_cut() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=80, record=True)
    status = fleet()
    status["services"][0]["waiting_for"] = "waiting for quorum: 2 online of 5 members, 4 needed; " * 2
    console.print(live.render(status_frame(status, T0 + 65), "zkdeploy status --watch (Ctrl-C to stop)", {}))
    text = console.export_text()
    assert "…" not in text and max(len(line.rstrip()) for line in text.splitlines()) <= 80
    assert "d-0000000007" in text and "1 restarting, starting: waiting for the health checks" in text
    assert "4 needed;" in " ".join(text.split())


def test_a_halted_deploy_is_red_on_a_terminal() -> None:
    console = terminal()
    frame = deploys_frame(fleet(), [entry("halted", message="too many failures")], T0 + 5)
    console.print(live.render(frame, "t", {}))
    red = [seg.text for seg in console._record_buffer if seg.style and seg.style.color
           and seg.style.color.name == "red"]
    assert "halted" in red


def test_a_view_on_a_terminal_redraws_in_place() -> None:
    console = terminal()
    with live.LiveView("t", as_json=False, console=console) as view:
        assert view._live is not None
        view.show(status_frame(fleet(), T0))
        view.show(status_frame(fleet(deploy_state="paused"), T0 + 1))
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert "\x1b[2K" in out or "\x1b[1A" in out  # the cursor goes back up to draw over the last picture


def test_elsewhere_one_plain_line_per_change(capsys: pytest.CaptureFixture[str]) -> None:
    with live.LiveView("t", as_json=False) as view:
        assert view._live is None  # stdout is not a terminal here
        view.show(status_frame(fleet(), T0))
        view.show(status_frame(fleet(), T0 + 1))  # only the time moved: no line
        view.show(status_frame(fleet(deploy_state="paused"), T0 + 2))
        view.show(status_frame(fleet(killswitch={"message": "stop", "by": "me"}, deploy_state="paused"), T0 + 3))
        view.show(status_frame(fleet(deploy_state="paused"), T0 + 4))
    lines = capsys.readouterr().out.splitlines()
    assert "\x1b" not in "".join(lines)
    text = [line.split(" ", 1)[1] for line in lines]  # without the clock
    assert text[0].startswith("db d-0000000007 pending 2/5 at 2, elapsed 0s, time left ? — restarting n3")
    assert text[1] == "  db n3: 1 restarting, starting: waiting for the health checks"
    assert text[2] == "  db n4: 1 failed: exited with status 3"
    assert text[3].startswith("  db n5: absent")
    assert text[4].startswith("web - idle 2/3 at 1 — no rollout")
    assert text[5] == "  web n3: 1 failed: port closed"
    assert text[6].startswith("db d-0000000007 paused 2/5 at 2, elapsed 2s")
    assert text[7:] == ["KILLSWITCH ON: stop (by me)", "killswitch off"]


def test_a_long_line_is_not_wrapped_when_piped(capsys: pytest.CaptureFixture[str]) -> None:
    status = fleet()
    status["services"][0]["waiting_for"] = "waiting for " + "x" * 300
    with live.LiveView("t", as_json=False) as view:
        view.show(status_frame(status, T0))
    assert any(line.endswith("x" * 300) for line in capsys.readouterr().out.splitlines())


def test_with_json_one_document_per_line_per_change(capsys: pytest.CaptureFixture[str]) -> None:
    with live.LiveView("t", as_json=True) as view:
        view.show(deploys_frame(fleet(), [entry()], T0 + 10))
        view.show(deploys_frame(fleet(), [entry()], T0 + 11))  # only the time moved
        view.show(deploys_frame(fleet(), [entry("done", finished=T0 + 12)], T0 + 12))
    docs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["deploys"][0]["state"] for d in docs] == ["pending", "done"]
    first = docs[0]
    assert first["at"] == "2023-11-14T22:13:30.000000+00:00" and first["deploys"][0]["created"].endswith("+00:00")
    assert first["deploys"][0]["done"] == 2 and first["deploys"][0]["total"] == 5
    assert [h["node"] for h in first["deploys"][0]["holding"]] == ["n3", "n4", "n5"]


def test_status_watch_json_lines_carry_the_whole_status(capsys: pytest.CaptureFixture[str]) -> None:
    status = fleet()
    with live.LiveView("t", as_json=True) as view:
        view.show(status_frame(status, T0), doc=status)
        view.show(status_frame(status, T0 + 1), doc=status)
    [line] = capsys.readouterr().out.splitlines()
    doc = json.loads(line)
    assert doc["services"][0]["absent"][0]["last_seen"].endswith("+00:00") and doc["queue"][0]["name"]


def test_the_seeding_meter_prints_a_line_per_change_or_draws_a_bar(capsys: pytest.CaptureFixture[str]) -> None:
    with live.Meter("hosts hold db@2", 3) as shown:
        for done in (0, 0, 2, 3):
            shown.update(done, "swarm 1.0 MB/s")
    assert capsys.readouterr().out.splitlines() == ["0/3 hosts hold db@2; swarm 1.0 MB/s",
                                                    "2/3 hosts hold db@2; swarm 1.0 MB/s",
                                                    "3/3 hosts hold db@2; swarm 1.0 MB/s"]
    console = terminal()
    with live.Meter("hosts hold db@2", 3, console=console) as shown:
        shown.update(2, "swarm 1.0 MB/s")
    text = console.export_text()
    assert "2/3" in text and "━" in text and "swarm 1.0 MB/s" in text
