"""Undo: order, last N, since a date, dry runs, refusals, back-out steps."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from zkdeploy.errors import JournalError
from zkdeploy.journal import (
    Executor,
    Journal,
    backout_steps,
    undo_change,
    undo_last,
    undo_order,
    undo_since,
)
from zkdeploy.journal.model import DONE, PARTIALLY_UNDONE, UNDONE


@pytest.fixture
def journal(tmp_path: Path):
    with Journal.open(tmp_path / "state" / "journal.db") as jr:
        yield jr


def _log_cmd(log: Path, word: str) -> list[str]:
    return ["sh", "-c", f"echo {word} >> {log}"]


def test_undo_runs_last_task_first_then_reverse_flagged_in_execution_order(
    journal: Journal, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    with Executor(journal).change_set("order") as cs:
        cs.run(["true"], undo=_log_cmd(log, "u1"))
        cs.run(["true"], undo=_log_cmd(log, "u2r"), reverse=True)
        cs.run(["true"], undo=_log_cmd(log, "u3"))
        cs.run(["true"], undo=_log_cmd(log, "u4r"), reverse=True)
        cs.run(["true"], undo=_log_cmd(log, "u5"))
    assert [t.position for t in undo_order(journal.get_change(1).tasks)] == [5, 3, 1, 2, 4]
    undo_change(journal, None, 1)
    assert log.read_text().split() == ["u5", "u3", "u1", "u2r", "u4r"]


def test_config_then_hup_restores_config_before_hup(journal: Journal, tmp_path: Path) -> None:
    conf = tmp_path / "app.conf"
    conf.write_text("v1")
    seen = tmp_path / "seen"
    hup = ["sh", "-c", f"cat {conf} >> {seen}; echo >> {seen}"]
    with Executor(journal).change_set("config") as cs:
        cs.write_file(conf, b"v2")
        cs.run(hup, undo=hup, reverse=True)
    undo_change(journal, None, 1)
    assert seen.read_text().split() == ["v2", "v1"]


def test_undo_unknown_change_id(journal: Journal) -> None:
    with pytest.raises(JournalError, match="no change set 7"):
        undo_change(journal, None, 7)


def test_undo_twice_is_refused(journal: Journal, tmp_path: Path) -> None:
    with Executor(journal).change_set("w") as cs:
        cs.write_file(tmp_path / "a", b"a")
    undo_change(journal, None, 1)
    with pytest.raises(JournalError, match="already undone"):
        undo_change(journal, None, 1)


def test_dry_run_changes_nothing(journal: Journal, tmp_path: Path) -> None:
    with Executor(journal).change_set("w") as cs:
        cs.write_file(tmp_path / "a", b"a")
        cs.swap_symlink(tmp_path / "l", "t")
    report = undo_change(journal, None, 1, dry_run=True)
    assert report.dry_run and [s.position for s in report.steps] == [2, 1]
    assert all(s.outcome == "undo" for s in report.steps)
    assert (tmp_path / "a").exists() and os.path.lexists(tmp_path / "l")
    assert journal.get_change(1).status == DONE


def test_undo_last_n_undoes_newest_first_and_skips_undone(journal: Journal, tmp_path: Path) -> None:
    conf = tmp_path / "c"
    conf.write_text("v0")
    ex = Executor(journal)
    for version in ("v1", "v2", "v3"):
        with ex.change_set(version) as cs:
            cs.write_file(conf, version.encode())
    reports = undo_last(journal, None, 1)
    assert [r.change_id for r in reports] == [3] and conf.read_text() == "v2"
    reports = undo_last(journal, None, 2)
    assert [r.change_id for r in reports] == [2, 1] and conf.read_text() == "v0"
    with pytest.raises(JournalError, match="0 change sets that can be undone, not 1"):
        undo_last(journal, None, 1)


def test_undo_last_checks_every_change_set_before_touching_any(journal: Journal, tmp_path: Path) -> None:
    ex = Executor(journal)
    with ex.change_set("irreversible") as cs:
        cs.run(["true"], no_undo=True)
    with ex.change_set("reversible") as cs:
        cs.write_file(tmp_path / "a", b"a")
    with pytest.raises(JournalError, match="change set 1 cannot be undone automatically"):
        undo_last(journal, None, 2)
    assert (tmp_path / "a").exists()
    assert [c.status for c in journal.list_changes()] == [DONE, DONE]


def test_undo_since(journal: Journal, tmp_path: Path) -> None:
    ex = Executor(journal)
    for name in ("a", "b", "c"):
        with ex.change_set(name) as cs:
            cs.write_file(tmp_path / name, name.encode())
    since = datetime.fromisoformat(journal.get_change(2).created)
    reports = undo_since(journal, None, since)
    assert [r.change_id for r in reports] == [3, 2]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name in "abc") == ["a"]


def test_undo_since_a_future_date_is_refused(journal: Journal, tmp_path: Path) -> None:
    with Executor(journal).change_set("a") as cs:
        cs.write_file(tmp_path / "a", b"a")
    with pytest.raises(JournalError, match="in the future"):
        undo_since(journal, None, datetime.now(UTC) + timedelta(days=1))
    assert (tmp_path / "a").exists()


def test_undoing_an_older_change_under_a_newer_one_is_refused(journal: Journal, tmp_path: Path) -> None:
    conf = tmp_path / "c"
    ex = Executor(journal)
    with ex.change_set("one") as cs:
        cs.write_file(conf, b"1")
    with ex.change_set("two") as cs:
        cs.write_file(conf, b"2")
    with pytest.raises(JournalError, match=r"later change sets changed again.*change set 2"):
        undo_change(journal, None, 1)
    assert conf.read_text() == "2"
    undo_change(journal, None, 2)
    undo_change(journal, None, 1)
    assert not conf.exists()


def test_a_failing_undo_stops_and_is_recorded(journal: Journal, tmp_path: Path) -> None:
    with Executor(journal).change_set("mixed") as cs:
        cs.write_file(tmp_path / "a", b"a")
        cs.run(["true"], undo=["false"])
        cs.write_file(tmp_path / "b", b"b")
    with pytest.raises(JournalError, match="stopped at task 2"):
        undo_change(journal, None, 1)
    change = journal.get_change(1)
    assert change.status == PARTIALLY_UNDONE
    assert [t.status for t in change.tasks] == [DONE, DONE, UNDONE]
    assert change.tasks[1].undo_state == "failed" and "exited with 1" in (change.tasks[1].undo_error or "")
    assert (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_backout_steps_are_shell_lines_in_undo_order(journal: Journal, tmp_path: Path) -> None:
    conf = tmp_path / "x.conf"
    conf.write_bytes(b"old")
    conf.chmod(0o644)
    link = tmp_path / "current"
    link.symlink_to("/data/releases/web/1")
    with Executor(journal).change_set("web 1 -> 2", deploy_id="d-0000000003") as cs:
        cs.write_file(conf, b"new")
        cs.swap_symlink(link, "/data/releases/web/2")
        cs.run(["true"], undo=["systemctl", "reload", "x"])  # the undo is printed, never run here
        cs.run(["rm", "-rf", str(tmp_path / "cache")], no_undo=True)
    steps = backout_steps(journal, 1)
    commands = [s for s in steps if not s.startswith("#")]
    backup = journal.get_change(1).tasks[0].undo.params["backup_file"]
    assert commands == [
        f"NO AUTOMATIC UNDO: run rm -rf {tmp_path}/cache cannot be undone automatically; back it out by hand",
        "systemctl reload x",
        f"ln -sfn /data/releases/web/1 {link}",
        f"cp {backup} {conf} && chmod 0644 {conf} && chown {os.getuid()}:{os.getgid()} {conf}",
    ]
    assert Path(backup).read_bytes() == b"old"
    assert "d-0000000003" in steps[1]
    with pytest.raises(JournalError, match="no change set 9"):
        backout_steps(journal, 9)
