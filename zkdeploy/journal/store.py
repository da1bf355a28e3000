"""The journal database: one SQLite file per host, WAL mode, ``synchronous=FULL``.

Every write is its own committed transaction.  What must be on disk before
the host changes (a change set, a task with its undo, an undo in flight, a
change set's end) is synced when its method returns: it survives a SIGKILL
or a power loss.  A task's outcome (``finish_task``) is committed without its
own sync: it survives a SIGKILL, and the next synced write (the next task,
the change set's end) carries it to the disk.  A power loss in between leaves
the task ``pending``, exactly as a crash during the task does, and recovery
treats a pending task as possibly done (its undo is safe either way), so
nothing is lost but one fsync per task.  Opening a file checks it
before changing anything: a file that is not a journal, is corrupt, or comes
from a newer schema raises :class:`JournalError` naming the file, and is left
byte-for-byte untouched.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from zkdeploy.errors import JournalError
from zkdeploy.journal.backups import BackupStore
from zkdeploy.journal.model import (
    DONE,
    FAILED,
    OPEN,
    PENDING,
    UNDOING,
    Action,
    ChangeSet,
    Task,
    dumps,
    to_utc,
    utcnow,
)

APPLICATION = "zkdeploy-journal"
SCHEMA_VERSION = 1

_SCHEMA_V1 = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE change_sets (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    deploy_id   TEXT,
    created     TEXT NOT NULL,
    finished    TEXT,
    description TEXT NOT NULL,
    status      TEXT NOT NULL
        CHECK (status IN ('open','done','failed','undoing','undone','partially-undone')),
    note        TEXT
);
CREATE INDEX change_sets_created ON change_sets(created);
CREATE TABLE tasks (
    change_id    INTEGER NOT NULL REFERENCES change_sets(id),
    position     INTEGER NOT NULL,
    exec_kind    TEXT NOT NULL,
    exec_params  TEXT NOT NULL,
    exec_desc    TEXT NOT NULL,
    undo_kind    TEXT NOT NULL,
    undo_params  TEXT NOT NULL,
    undo_desc    TEXT NOT NULL,
    reverse      INTEGER NOT NULL DEFAULT 0,
    status       TEXT NOT NULL CHECK (status IN ('pending','done','failed','undone')),
    undo_state   TEXT CHECK (undo_state IS NULL OR undo_state IN ('pending','failed')),
    started      TEXT NOT NULL,
    finished     TEXT,
    undone       TEXT,
    result       TEXT,
    error        TEXT,
    undo_error   TEXT,
    PRIMARY KEY (change_id, position)
);
CREATE TABLE targets (
    change_id INTEGER NOT NULL,
    position  INTEGER NOT NULL,
    path      TEXT NOT NULL,
    PRIMARY KEY (change_id, position, path)
);
CREATE INDEX targets_path ON targets(path);
"""

# Migrations from version N to N+1; empty while there is one version.
_MIGRATIONS: dict[int, str] = {}


def _check_existing(path: Path) -> bool:
    """Validate an existing file without writing to it.

    Returns True when the file is an empty SQLite database that may be
    initialised; False when it is a valid journal.  Raises JournalError when
    it is not a journal, is corrupt, or has a newer schema.
    """
    uri = f"file:{path}?mode=ro"
    try:
        con = sqlite3.connect(uri, uri=True, timeout=10)
    except sqlite3.Error as exc:
        raise JournalError(f"cannot open journal {path}: {exc}") from exc
    try:
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not tables:
                return True
            if "meta" not in tables:
                raise JournalError(f"{path} is not a zkdeploy journal (no meta table)")
            meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
            if meta.get("application") != APPLICATION:
                raise JournalError(f"{path} is not a zkdeploy journal (application={meta.get('application')!r})")
            try:
                version = int(meta.get("schema_version", ""))
            except ValueError:
                raise JournalError(f"journal {path} has an unreadable schema_version") from None
            if version > SCHEMA_VERSION:
                raise JournalError(
                    f"journal {path} has schema version {version}, newer than this zkdeploy "
                    f"understands ({SCHEMA_VERSION}); upgrade zkdeploy to read it"
                )
            check = con.execute("PRAGMA quick_check").fetchall()
            if check != [("ok",)]:
                raise JournalError(f"journal {path} is corrupt: {check[0][0]}")
            return False
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"journal {path} is corrupt or not a journal: {exc}") from exc
    finally:
        con.close()


class Journal:
    """One host's change journal.  Use :meth:`open`; close with :meth:`close`."""

    def __init__(self, path: Path, con: sqlite3.Connection, durable: bool = True) -> None:
        self.path = path
        self.durable = durable
        self.backups = BackupStore(Path(str(path) + ".backups"))
        self._con = con
        self._mutex = threading.RLock()

    # -- opening ---------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str], *, create: bool = True, durable: bool = True) -> Journal:
        """Open (and, with ``create``, create) the journal at ``path``.

        Guarantees: an existing file is validated read-only first and never
        modified when it is not a usable journal; a new file has the current
        schema committed before this returns.  ``durable=False`` (simulated
        hosts in tests) skips the fsync of every commit: the journal then
        survives a process crash but not a power loss.
        """
        path = Path(path).absolute()
        fresh = True
        if path.exists() and path.stat().st_size > 0:
            fresh = _check_existing(path)
        elif not create:
            raise JournalError(f"no journal at {path}")
        if fresh and not create:
            raise JournalError(f"{path} is an empty database, not a journal")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            con = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL" if durable else "PRAGMA synchronous=OFF")
            con.execute("PRAGMA foreign_keys=ON")
        except sqlite3.Error as exc:
            raise JournalError(f"cannot open journal {path}: {exc}") from exc
        journal = cls(path, con, durable)
        journal._ensure_schema()
        return journal

    def _ensure_schema(self) -> None:
        with self._tx() as con:
            has_meta = con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
            if not has_meta:
                for statement in _SCHEMA_V1.split(";"):
                    if statement.strip():
                        con.execute(statement)
                con.execute("INSERT INTO meta VALUES ('application', ?)", (APPLICATION,))
                con.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                con.execute("INSERT INTO meta VALUES ('created', ?)", (utcnow(),))
                return
            version = int(con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])
            while version < SCHEMA_VERSION:
                for statement in _MIGRATIONS[version].split(";"):
                    if statement.strip():
                        con.execute(statement)
                version += 1
                con.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(version),))

    def close(self) -> None:
        with self._mutex:
            self._con.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _tx(self, synced: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed on exit, rolled back on error.  ``synced`` False commits
        without an fsync of its own (WAL, ``synchronous=NORMAL``): it survives a process crash, and
        the next synced commit makes it durable."""
        lazy = not synced and self.durable
        with self._mutex:
            if lazy:
                self._con.execute("PRAGMA synchronous=NORMAL")
            try:
                try:
                    self._con.execute("BEGIN IMMEDIATE")
                except sqlite3.Error as exc:
                    raise JournalError(f"journal {self.path} is busy or unwritable: {exc}") from exc
                try:
                    yield self._con
                except BaseException:
                    self._con.execute("ROLLBACK")
                    raise
                try:
                    self._con.execute("COMMIT")
                except sqlite3.Error as exc:
                    raise JournalError(f"journal {self.path}: commit failed: {exc}") from exc
            finally:
                if lazy:
                    self._con.execute("PRAGMA synchronous=FULL")

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self._mutex:
            cur = self._con.execute(sql, args)
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    @contextlib.contextmanager
    def writer_lock(self) -> Iterator[None]:
        """Hold the journal's writer lock (one executor/undo/recovery at a time).

        Raises JournalError at once if another process holds it.  The lock is
        an flock, so a killed holder releases it automatically.
        """
        lock_path = Path(str(self.path) + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise JournalError(f"journal {self.path} is in use by another process") from None
            yield
        finally:
            os.close(fd)

    # -- writes ----------------------------------------------------------
    def begin_change(self, description: str, deploy_id: str | None) -> int:
        """Record a new open change set and return its id (ids only increase)."""
        with self._tx() as con:
            cur = con.execute(
                "INSERT INTO change_sets (deploy_id, created, description, status) VALUES (?,?,?,?)",
                (deploy_id, utcnow(), description, OPEN),
            )
            return int(cur.lastrowid)  # type: ignore[arg-type]

    def add_task(
        self, change_id: int, position: int, execute: Action, undo: Action, reverse: bool, targets: list[str]
    ) -> None:
        """Durably record a task as pending, with its undo, before it is executed."""
        with self._tx() as con:
            con.execute(
                "INSERT INTO tasks (change_id, position, exec_kind, exec_params, exec_desc, undo_kind,"
                " undo_params, undo_desc, reverse, status, started) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    change_id, position, execute.kind, dumps(execute.params), execute.description,
                    undo.kind, dumps(undo.params), undo.description, int(reverse), PENDING, utcnow(),
                ),
            )
            for target in targets:
                con.execute("INSERT OR IGNORE INTO targets VALUES (?,?,?)", (change_id, position, target))

    def finish_task(
        self, change_id: int, position: int, status: str, result: Any = None, error: str | None = None
    ) -> None:
        """Record that a task's execute finished (``done``) or failed (committed, synced by the next
        synced write: see the module's docstring)."""
        with self._tx(synced=False) as con:
            con.execute(
                "UPDATE tasks SET status=?, finished=?, result=?, error=? WHERE change_id=? AND position=?",
                (status, utcnow(), None if result is None else dumps(result), error, change_id, position),
            )

    def set_undo_state(
        self, change_id: int, position: int, state: str | None, error: str | None = None
    ) -> None:
        """Record an undo in flight (``pending``), failed, or finished (``None`` + status undone)."""
        with self._tx() as con:
            if state is None:
                con.execute(
                    "UPDATE tasks SET status='undone', undo_state=NULL, undone=?, undo_error=NULL"
                    " WHERE change_id=? AND position=?",
                    (utcnow(), change_id, position),
                )
            else:
                con.execute(
                    "UPDATE tasks SET undo_state=?, undo_error=? WHERE change_id=? AND position=?",
                    (state, error, change_id, position),
                )

    def set_change_status(self, change_id: int, status: str, note: str | None = None) -> None:
        """Record a change set's new status (and a note saying why, if given)."""
        with self._tx() as con:
            finished = None if status in (OPEN, UNDOING) else utcnow()
            con.execute(
                "UPDATE change_sets SET status=?, finished=COALESCE(?, finished),"
                " note=COALESCE(?, note) WHERE id=?",
                (status, finished, note, change_id),
            )

    # -- reads -----------------------------------------------------------
    @staticmethod
    def _task(row: dict[str, Any]) -> Task:
        return Task(
            change_id=row["change_id"],
            position=row["position"],
            execute=Action(row["exec_kind"], json.loads(row["exec_params"]), row["exec_desc"]),
            undo=Action(row["undo_kind"], json.loads(row["undo_params"]), row["undo_desc"]),
            reverse=bool(row["reverse"]),
            status=row["status"],
            undo_state=row["undo_state"],
            started=row["started"],
            finished=row["finished"],
            undone=row["undone"],
            result=None if row["result"] is None else json.loads(row["result"]),
            error=row["error"],
            undo_error=row["undo_error"],
        )

    def _change(self, row: dict[str, Any]) -> ChangeSet:
        tasks = self._query("SELECT * FROM tasks WHERE change_id=? ORDER BY position", (row["id"],))
        return ChangeSet(
            id=row["id"],
            deploy_id=row["deploy_id"],
            created=row["created"],
            finished=row["finished"],
            description=row["description"],
            status=row["status"],
            note=row["note"],
            tasks=tuple(self._task(t) for t in tasks),
        )

    def get_change(self, change_id: int) -> ChangeSet:
        """Return change set ``change_id``; JournalError if there is none."""
        rows = self._query("SELECT * FROM change_sets WHERE id=?", (int(change_id),))
        if not rows:
            raise JournalError(f"journal {self.path} has no change set {change_id}")
        return self._change(rows[0])

    def list_changes(self, since: datetime | None = None, limit: int | None = None) -> list[ChangeSet]:
        """Change sets created at or after ``since`` (naive = UTC), newest first."""
        sql = "SELECT * FROM change_sets"
        args: list[Any] = []
        if since is not None:
            sql += " WHERE created >= ?"
            args.append(to_utc(since).isoformat(timespec="microseconds"))
        sql += " ORDER BY id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        return [self._change(r) for r in self._query(sql, tuple(args))]

    def in_flight(self) -> list[Task]:
        """Tasks a crash interrupted: executes still pending and undos still pending."""
        rows = self._query(
            "SELECT * FROM tasks WHERE status=? OR undo_state=? ORDER BY change_id, position",
            (PENDING, PENDING),
        )
        return [self._task(r) for r in rows]

    def interrupted_changes(self) -> list[ChangeSet]:
        """Change sets left ``open`` or ``undoing`` (their process died), oldest first."""
        rows = self._query("SELECT * FROM change_sets WHERE status IN (?,?) ORDER BY id", (OPEN, UNDOING))
        return [self._change(r) for r in rows]

    def blame(self, path: str | os.PathLike[str]) -> Task | None:
        """The task that produced what is now at ``path``, or None.

        That is the most recent task that wrote, swapped or removed ``path``
        (or a directory containing it) and that is still in effect (done, or
        failed part-way); undone tasks are skipped, since their effect is gone.
        """
        target = os.path.normpath(os.path.abspath(path))
        rows = self._query(
            "SELECT t.* FROM targets g JOIN tasks t ON t.change_id=g.change_id AND t.position=g.position"
            " WHERE (g.path=? OR substr(?, 1, length(g.path) + 1) = g.path || '/') AND t.status IN (?,?)"
            " ORDER BY t.change_id DESC, t.position DESC LIMIT 1",
            (target, target, DONE, FAILED),
        )
        return self._task(rows[0]) if rows else None

    def later_writers(self, change_id: int) -> list[tuple[int, str]]:
        """(change id, path) of later tasks still in effect that touch a path change ``change_id`` touched.

        Undoing ``change_id`` alone would clobber what those later changes did.
        """
        rows = self._query(
            "SELECT DISTINCT g2.change_id AS cid, g2.path AS path FROM targets g1"
            " JOIN targets g2 ON g2.change_id > g1.change_id AND (g2.path = g1.path"
            "   OR substr(g2.path, 1, length(g1.path) + 1) = g1.path || '/'"
            "   OR substr(g1.path, 1, length(g2.path) + 1) = g2.path || '/')"
            " JOIN tasks t ON t.change_id = g2.change_id AND t.position = g2.position"
            " WHERE g1.change_id = ? AND t.status IN (?,?,?) ORDER BY cid, path",
            (int(change_id), DONE, FAILED, PENDING),
        )
        return [(r["cid"], r["path"]) for r in rows]
