"""Crash safety: SIGKILL a real child process at every point of a change set and of an undo.

The child runs a five-task change set (tests/unit/crashy.py) with
``ZKDEPLOY_CRASH_AT`` armed, so it kills itself (SIGKILL, no cleanup) at one
point.  The same work is also run in-process with a SimulatedCrash installed
in place of the SIGKILL, and must leave the same journal.  The parent then checks that
the journal names what was done and what was in flight, and that recovery
leaves the tree exactly as the journal says: without the in-flight task
(policy ``undo``) or with it (policy ``complete``); and that undoing the
recovered change set brings the tree back to where it started.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import zkdeploy
from zkdeploy import crash
from zkdeploy.journal import CRASH_ENV, Executor, Journal, recover, undo_change
from zkdeploy.journal.model import DONE, FAILED, OPEN, PENDING, UNDOING, UNDONE

from .crashy import work

REPO = Path(zkdeploy.__file__).resolve().parent.parent
TASKS = 5

STEPS = [
    lambda root: _write(root / "etc" / "a.conf", b"a2\n", 0o600),
    lambda root: _write(root / "etc" / "b.conf", b"b1\n", 0o644),
    lambda root: _relink(root / "current", "releases/2"),
    lambda root: _write(root / "flag", b"", 0o644),
    lambda root: _rmtree(root / "releases" / "0"),
]


def _write(path: Path, data: bytes, mode: int) -> None:
    path.write_bytes(data)
    path.chmod(mode)


def _relink(link: Path, target: str) -> None:
    link.unlink()
    link.symlink_to(target)


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path)


def snapshot(root: Path) -> dict[str, tuple]:
    state: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                state[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                state[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                state[rel] = ("file", path.read_bytes(), stat.S_IMODE(st.st_mode))
    return state


def make_host(root: Path) -> None:
    (root / "etc").mkdir(parents=True)
    _write(root / "etc" / "a.conf", b"a1\n", 0o644)
    for release in ("0", "1", "2"):
        (root / "releases" / release).mkdir(parents=True)
        _write(root / "releases" / release / "app", release.encode(), 0o755)
    (root / "current").symlink_to("releases/1")


def expected_states(tmp_path: Path) -> list[dict[str, tuple]]:
    """States S0..S5 of the tree: S_k is the tree after the first k tasks."""
    root = tmp_path / "reference"
    make_host(root)
    states = [snapshot(root)]
    for step in STEPS:
        step(root)
        states.append(snapshot(root))
    return states


def run_child(root: Path, db: Path, mode: str, crash_at: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env[CRASH_ENV] = crash_at
    return subprocess.run(
        [sys.executable, "-m", "tests.unit.crashy", str(root), str(db), mode],
        env=env, capture_output=True, text=True, timeout=60, cwd=REPO,
    )


def crash_at(how: str, root: Path, db: Path, mode: str, point: str) -> None:
    """Run the work and have it crash at ``point``: SIGKILLed in a child, or a SimulatedCrash here."""
    if how == "sigkill":
        proc = run_child(root, db, mode, point)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        return
    with crash.installed(crash.raise_at(point)), pytest.raises(crash.SimulatedCrash) as info:
        work(root, db, mode)
    assert info.value.point == point


CRASH_POINTS = ["begin"] + [f"{k}:{when}" for k in range(1, TASKS + 1) for when in ("before", "after")] + ["end"]


def _tasks_done_before(point: str) -> tuple[int, int | None]:
    """(number of tasks done, position in flight or None) at a crash point."""
    if point == "begin":
        return 0, None
    if point == "end":
        return TASKS, None
    position = int(point.split(":")[0])
    return position - 1, position


@pytest.mark.parametrize("how", ["sigkill", "in-process"])
@pytest.mark.parametrize("policy", ["undo", "complete"])
@pytest.mark.parametrize("point", CRASH_POINTS)
def test_crash_during_a_change_set(tmp_path: Path, point: str, policy: str, how: str) -> None:
    states = expected_states(tmp_path)
    root, db = tmp_path / "host", tmp_path / "state" / "journal.db"
    make_host(root)
    crash_at(how, root, db, "execute", point)

    done, in_flight = _tasks_done_before(point)
    with Journal.open(db) as journal:
        change = journal.get_change(1)
        assert change.status == OPEN
        assert [t.status for t in change.tasks[:done]] == [DONE] * done
        flight = journal.in_flight()
        if in_flight is None:
            assert flight == []
            assert len(change.tasks) == done
        else:
            assert [t.position for t in flight] == [in_flight]
            assert flight[0].status == PENDING and flight[0].undo.kind  # undo recorded before the change
            assert len(change.tasks) == in_flight
            crashed_after = point.endswith(":after")
            assert snapshot(root) == states[in_flight if crashed_after else in_flight - 1]

        recover(journal, None, policy=policy)
        assert journal.in_flight() == []
        change = journal.get_change(1)
        assert change.status == FAILED and "interrupted by a crash" in (change.note or "")
        if in_flight is None:
            assert snapshot(root) == states[done]
        elif policy == "undo":
            assert change.tasks[-1].status == UNDONE
            assert snapshot(root) == states[in_flight - 1]
        else:
            assert change.tasks[-1].status == DONE
            assert snapshot(root) == states[in_flight]

        undo_change(journal, None, 1)
        assert snapshot(root) == states[0]
        assert journal.get_change(1).status == UNDONE


UNDO_POINTS = [f"undo:{k}:{when}" for k in range(1, TASKS + 1) for when in ("before", "after")]


@pytest.mark.parametrize("how", ["sigkill", "in-process"])
@pytest.mark.parametrize("point", UNDO_POINTS)
def test_crash_during_an_undo_is_resumed_by_recovery(tmp_path: Path, point: str, how: str) -> None:
    states = expected_states(tmp_path)
    root, db = tmp_path / "host", tmp_path / "state" / "journal.db"
    make_host(root)
    work(root, db, "execute")
    assert snapshot(root) == states[TASKS]

    crash_at(how, root, db, "undo", point)
    position = int(point.split(":")[1])
    with Journal.open(db) as journal:
        assert journal.get_change(1).status == UNDOING
        flight = journal.in_flight()
        assert [(t.position, t.undo_state) for t in flight] == [(position, PENDING)]

        actions = recover(journal, None, policy="complete")  # a crashed undo is finished whatever the policy
        assert [a.action for a in actions] == ["undo-resumed"]
        assert journal.get_change(1).status == UNDONE
        assert journal.in_flight() == []
    assert snapshot(root) == states[0]


def test_recovery_refuses_while_a_live_process_holds_the_journal(tmp_path: Path) -> None:
    from zkdeploy.errors import JournalError

    with Journal.open(tmp_path / "j.db") as journal:
        with Executor(journal).change_set("busy"), Journal.open(tmp_path / "j.db") as other, \
                pytest.raises(JournalError, match="in use"):
            recover(other, None)
        assert recover(journal, None) == []


def test_an_interrupted_step_without_undo_is_left_for_a_person(tmp_path: Path) -> None:
    from zkdeploy.errors import JournalError
    from zkdeploy.journal import NO_UNDO, Action

    with Journal.open(tmp_path / "j.db") as journal:
        # the rows a process killed in the middle of a no_undo command leaves behind
        cid = journal.begin_change("cleanup", None)
        journal.add_task(cid, 1, Action("command", {"argv": ["true"], "timeout": 5}, "run true"),
                         Action(NO_UNDO, {"of": "run true"}, "cannot be undone automatically"), False, [])
        with pytest.raises(JournalError, match="policy must be one of undo, complete"):
            recover(journal, None, policy="pray")
        actions = recover(journal, None, policy="undo")
        assert [(a.position, a.action) for a in actions] == [(1, "needs-attention"), (None, "closed")]
        task = journal.get_change(cid).tasks[0]
        assert task.status == FAILED and "cannot be undone automatically" in (task.error or "")
        assert journal.in_flight() == []
