"""NoAction: the same code path plans exactly what the live run then does, and changes nothing."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from zkdeploy.errors import JournalError
from zkdeploy.journal import Executor, Journal, render_plan


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root``: file bytes and mode, symlink target, or directory mode."""
    state: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                state[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                state[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                state[rel] = ("file", path.read_bytes(), stat.S_IMODE(st.st_mode))
    return state


def deploy(ex: Executor, root: Path) -> None:
    """One deploy's changes, written once and run in both modes."""
    with ex.change_set("web 1 -> 2", deploy_id="d-0000000003") as cs:
        cs.write_file(root / "etc" / "web.conf", b"port = 8080\n", mode=0o640)
        cs.write_file(root / "etc" / "new.conf", b"fresh\n")
        cs.swap_symlink(root / "current", root / "releases" / "2")
        cs.run(["touch", str(root / "reloaded")], undo=["rm", "-f", str(root / "reloaded")], timeout=10)
        cs.run(["rm", "-rf", str(root / "cache")], no_undo=True)
        cs.remove_tree(root / "releases" / "0")
        cs.run(["true"], undo=["true"], timeout=5)


@pytest.fixture
def host(tmp_path: Path) -> Path:
    root = tmp_path / "host"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "web.conf").write_bytes(b"port = 80\n")
    for release in ("0", "1", "2"):
        (root / "releases" / release).mkdir(parents=True)
        (root / "releases" / release / "app").write_text(release)
    (root / "current").symlink_to(root / "releases" / "1")
    (root / "cache").mkdir()
    return root


def test_noaction_changes_nothing_and_writes_no_journal(host: Path, tmp_path: Path) -> None:
    before = snapshot(tmp_path)
    ex = Executor(tmp_path / "state" / "journal.db", noaction=True)
    deploy(ex, host)
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "state").exists()
    assert [a.kind for a in ex.plan] == [
        "file_write", "file_write", "symlink_swap", "command", "command", "remove_tree", "command",
    ]
    assert [a.undoable for a in ex.plan] == [True, True, True, True, False, True, True]
    text = render_plan(ex.plan)
    assert f"web 1 -> 2 #5: command: run rm -rf {host}/cache  [cannot be undone automatically]" in text


def test_noaction_with_an_open_journal_adds_no_row(host: Path, tmp_path: Path) -> None:
    with Journal.open(tmp_path / "j.db") as journal:
        deploy(Executor(journal, noaction=True), host)
        assert journal.list_changes() == []
    assert not (tmp_path / "j.db.backups").exists()


def test_plan_equals_what_the_live_run_does(host: Path, tmp_path: Path) -> None:
    db = tmp_path / "state" / "journal.db"
    dry = Executor(db, noaction=True)
    deploy(dry, host)
    with Journal.open(db) as journal:
        live = Executor(journal)
        deploy(live, host)
        assert live.plan == dry.plan
        recorded = [
            (t.position, t.execute.kind, t.execute.description, t.execute.params)
            for t in journal.get_change(1).tasks
        ]
    assert recorded == [(a.position, a.kind, a.description, a.params) for a in dry.plan]
    assert (host / "reloaded").exists() and not (host / "cache").exists()


def test_noaction_reports_the_same_refusals(tmp_path: Path) -> None:
    ex = Executor(tmp_path / "j.db", noaction=True)
    with pytest.raises(JournalError, match="needs undo"), ex.change_set("bad") as cs:
        cs.run(["true"])
    with pytest.raises(JournalError, match="does not exist"), ex.change_set("bad") as cs:
        cs.write_file(tmp_path / "missing" / "f", b"")
    assert not (tmp_path / "j.db").exists()
