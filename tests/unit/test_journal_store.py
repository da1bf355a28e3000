"""The journal file: creation, schema checks, corrupt and foreign files, queries."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from zkdeploy.errors import JournalError
from zkdeploy.journal import SCHEMA_VERSION, Executor, Journal


def _journal_with_one_change(tmp_path: Path) -> Path:
    db = tmp_path / "state" / "journal.db"
    with Journal.open(db) as journal, Executor(journal).change_set("one", deploy_id="d-1") as cs:
        cs.write_file(tmp_path / "a.conf", b"a\n")
    return db


def test_open_creates_a_wal_journal_with_schema_version(tmp_path: Path) -> None:
    db = tmp_path / "state" / "journal.db"
    Journal.open(db).close()
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
    assert meta["schema_version"] == str(SCHEMA_VERSION)
    assert meta["application"] == "zkdeploy-journal"


def test_reopen_keeps_changes_and_ids_increase(tmp_path: Path) -> None:
    db = _journal_with_one_change(tmp_path)
    with Journal.open(db) as journal:
        with Executor(journal).change_set("two") as cs:
            cs.write_file(tmp_path / "b.conf", b"b\n")
        ids = [c.id for c in journal.list_changes()]
    assert ids == [2, 1]


def test_open_without_create_refuses_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="no journal at"):
        Journal.open(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()


def test_random_bytes_are_refused_and_left_untouched(tmp_path: Path) -> None:
    bad = tmp_path / "journal.db"
    junk = bytes(range(256)) * 64
    bad.write_bytes(junk)
    with pytest.raises(JournalError, match=str(bad)):
        Journal.open(bad)
    assert bad.read_bytes() == junk
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.db"]


def test_a_damaged_journal_is_refused_and_left_untouched(tmp_path: Path) -> None:
    db = _journal_with_one_change(tmp_path)
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.execute("PRAGMA journal_mode=DELETE")
    con.close()
    data = bytearray(db.read_bytes())
    page = 4096
    for offset in range(page + 8, min(len(data), 3 * page)):  # scribble over page 2 onward
        data[offset] = 0xA5
    db.write_bytes(bytes(data))
    before = db.read_bytes()
    with pytest.raises(JournalError, match="corrupt"):
        Journal.open(db)
    assert db.read_bytes() == before


def test_another_sqlite_database_is_not_a_journal(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE users (name TEXT)")
    con.commit()
    con.close()
    before = other.read_bytes()
    with pytest.raises(JournalError, match="not a zkdeploy journal"):
        Journal.open(other)
    assert other.read_bytes() == before


def test_a_newer_schema_is_refused_and_left_untouched(tmp_path: Path) -> None:
    db = _journal_with_one_change(tmp_path)
    con = sqlite3.connect(db)
    con.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    con.commit()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    before = db.read_bytes()
    with pytest.raises(JournalError, match=r"schema version 2, newer"):
        Journal.open(db)
    assert db.read_bytes() == before


def test_get_change_unknown_id(tmp_path: Path) -> None:
    db = _journal_with_one_change(tmp_path)
    with Journal.open(db) as journal, pytest.raises(JournalError, match="no change set 42"):
        journal.get_change(42)


def test_list_changes_since_and_limit(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "j.db") as journal:
        ex = Executor(journal)
        for i in range(3):
            with ex.change_set(f"c{i}") as cs:
                cs.write_file(tmp_path / f"f{i}", b"x")
        all_changes = journal.list_changes()
        assert [c.description for c in all_changes] == ["c2", "c1", "c0"]
        assert [c.id for c in journal.list_changes(limit=2)] == [3, 2]
        middle = datetime.fromisoformat(all_changes[1].created)
        assert [c.id for c in journal.list_changes(since=middle)] == [3, 2]
        naive_future = datetime.now(UTC).replace(tzinfo=None) + timedelta(hours=1)
        assert journal.list_changes(since=naive_future) == []


def test_blame_names_the_last_change_still_in_effect(tmp_path: Path) -> None:
    target = tmp_path / "etc" / "x.conf"
    target.parent.mkdir()
    tree = tmp_path / "rel" / "1"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "f").write_text("f")
    with Journal.open(tmp_path / "j.db") as journal:
        ex = Executor(journal)
        with ex.change_set("first") as cs:
            cs.write_file(target, b"1")
        with ex.change_set("second") as cs:
            cs.write_file(target, b"2")
            cs.swap_symlink(tmp_path / "current", tree)
            cs.remove_tree(tree)
        task = journal.blame(target)
        assert task is not None and task.change_id == 2 and task.position == 1
        link_task = journal.blame(tmp_path / "current")
        assert link_task is not None and link_task.execute.kind == "symlink_swap"
        inner = journal.blame(tree / "sub" / "f")
        assert inner is not None and inner.execute.kind == "remove_tree"
        assert journal.blame(tmp_path / "never") is None
        from zkdeploy.journal import undo_change

        undo_change(journal, None, 2)
        task = journal.blame(target)
        assert task is not None and task.change_id == 1


def test_only_one_writer_at_a_time(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "j.db") as journal, journal.writer_lock(), \
            Journal.open(tmp_path / "j.db") as other, \
            pytest.raises(JournalError, match="in use by another process"), \
            Executor(other).change_set("blocked"):
        pass
