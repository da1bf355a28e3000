"""Each action kind, executed through a change set and then undone, on real files."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from zkdeploy.errors import JournalError, ServiceError, StepTimeoutError
from zkdeploy.journal import (
    NOTHING_TO_UNDO,
    ActionHandler,
    Executor,
    Journal,
    default_registry,
    undo_change,
)
from zkdeploy.journal.model import DONE, FAILED, UNDONE

from .escapee import call_within, escaping_command


@pytest.fixture
def journal(tmp_path: Path):
    with Journal.open(tmp_path / "state" / "journal.db") as jr:
        yield jr


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_file_write_replaces_content_and_mode_and_undo_restores(journal: Journal, tmp_path: Path) -> None:
    conf = tmp_path / "x.conf"
    conf.write_bytes(b"old\n")
    conf.chmod(0o640)
    with Executor(journal).change_set("w") as cs:
        cs.write_file(conf, b"new\n", mode=0o600)
    assert conf.read_bytes() == b"new\n" and _mode(conf) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".x.conf")]  # no temp left behind
    undo_change(journal, None, 1)
    assert conf.read_bytes() == b"old\n" and _mode(conf) == 0o640
    assert journal.get_change(1).status == UNDONE


def test_file_write_keeps_the_existing_mode_when_none_is_given(journal: Journal, tmp_path: Path) -> None:
    conf = tmp_path / "x.conf"
    conf.write_bytes(b"old")
    conf.chmod(0o751)
    with Executor(journal).change_set("w") as cs:
        cs.write_file(conf, "new")
    assert _mode(conf) == 0o751


def test_file_write_of_a_new_file_is_undone_by_removing_it(journal: Journal, tmp_path: Path) -> None:
    new = tmp_path / "new.conf"
    with Executor(journal).change_set("w") as cs:
        cs.write_file(new, b"hello")
    assert new.read_bytes() == b"hello" and _mode(new) == 0o644
    undo_change(journal, None, 1)
    assert not new.exists()


def test_file_write_undo_is_idempotent(journal: Journal, tmp_path: Path) -> None:
    conf = tmp_path / "x.conf"
    conf.write_bytes(b"old")
    with Executor(journal).change_set("w") as cs:
        cs.write_file(conf, b"new")
    task = journal.get_change(1).tasks[0]
    handler = default_registry().get(task.undo.kind)
    handler.execute(task.undo.params, noaction=False)
    handler.execute(task.undo.params, noaction=False)
    assert conf.read_bytes() == b"old"


def test_file_write_refuses_a_missing_directory_and_a_symlink(journal: Journal, tmp_path: Path) -> None:
    ex = Executor(journal)
    with pytest.raises(JournalError, match="does not exist"), ex.change_set("w") as cs:
        cs.write_file(tmp_path / "nodir" / "x", b"x")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    with pytest.raises(JournalError, match="symlink"), ex.change_set("w") as cs:
        cs.write_file(tmp_path / "link", b"x")
    assert [c.status for c in journal.list_changes()] == [FAILED, FAILED]
    assert all(not c.tasks for c in journal.list_changes())


def test_symlink_swap_and_undo(journal: Journal, tmp_path: Path) -> None:
    link = tmp_path / "current"
    link.symlink_to("releases/1")
    with Executor(journal).change_set("swap") as cs:
        cs.swap_symlink(link, "releases/2")
        cs.swap_symlink(tmp_path / "fresh", "releases/2")
    assert os.readlink(link) == "releases/2" and os.readlink(tmp_path / "fresh") == "releases/2"
    undo_change(journal, None, 1)
    assert os.readlink(link) == "releases/1"
    assert not os.path.lexists(tmp_path / "fresh")


def test_symlink_swap_refuses_a_real_directory(journal: Journal, tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    with pytest.raises(JournalError, match="not a symlink"), Executor(journal).change_set("swap") as cs:
        cs.swap_symlink(tmp_path / "dir", "elsewhere")
    assert (tmp_path / "dir").is_dir()


def test_command_with_undo_command(journal: Journal, tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    with Executor(journal).change_set("cmd") as cs:
        outcome = cs.run(["touch", str(flag)], undo=["rm", "-f", str(flag)], timeout=10)
    assert flag.exists() and outcome.result["returncode"] == 0
    undo_change(journal, None, 1)
    assert not flag.exists()


def test_shell_string_command(journal: Journal, tmp_path: Path) -> None:
    with Executor(journal).change_set("cmd") as cs:
        cs.run(f"echo hi > {tmp_path}/out", undo=f"rm {tmp_path}/out")
    assert (tmp_path / "out").read_text() == "hi\n"


def test_a_failing_command_raises_and_is_recorded_failed(journal: Journal, tmp_path: Path) -> None:
    with pytest.raises(ServiceError, match="exited with 3: boom"), Executor(journal).change_set("cmd") as cs:
        cs.write_file(tmp_path / "a", b"a")
        cs.run(["sh", "-c", "echo boom >&2; exit 3"], no_undo=True)
    change = journal.get_change(1)
    assert change.status == FAILED and "boom" in (change.note or "")
    assert [t.status for t in change.tasks] == [DONE, FAILED]


def test_a_command_past_its_timeout_is_killed(journal: Journal) -> None:
    with pytest.raises(StepTimeoutError, match=r"ran past 0\.3s and was killed"), \
            Executor(journal).change_set("cmd") as cs:
        cs.run(["sleep", "30"], undo=NOTHING_TO_UNDO, timeout=0.3)
    assert journal.get_change(1).tasks[0].status == FAILED


def test_a_timed_out_command_returns_even_when_a_grandchild_keeps_the_output_open(
        journal: Journal, tmp_path: Path) -> None:
    def change() -> None:
        with Executor(journal).change_set("cmd") as cs:
            cs.run(["sh", "-c", command], undo=NOTHING_TO_UNDO, timeout=0.5)

    with escaping_command(tmp_path) as command:
        started = time.monotonic()
        error = call_within(10, change)
        assert isinstance(error, StepTimeoutError) and "ran past 0.5s and was killed" in str(error), error
        assert time.monotonic() - started < 5
    assert journal.get_change(1).tasks[0].status == FAILED


def test_a_command_needs_an_undo_or_no_undo(journal: Journal) -> None:
    with pytest.raises(JournalError, match=r"needs undo=\.\.\. or no_undo=True"), \
            Executor(journal).change_set("cmd") as cs:
        cs.run(["true"])
    assert journal.get_change(1).tasks == ()


def test_no_undo_is_said_everywhere_and_refused_unless_forced(journal: Journal, tmp_path: Path) -> None:
    from zkdeploy.journal import backout_steps, render_change

    with Executor(journal).change_set("cmd") as cs:
        cs.write_file(tmp_path / "a", b"a")
        cs.run(["true"], no_undo=True)
    change = journal.get_change(1)
    assert not change.undoable
    assert "cannot be undone automatically" in render_change(change)
    assert any(line.startswith("NO AUTOMATIC UNDO: run true") for line in backout_steps(journal, 1))
    with pytest.raises(JournalError, match="cannot be undone automatically"):
        undo_change(journal, None, 1)
    assert (tmp_path / "a").exists() and journal.get_change(1).status == DONE
    report = undo_change(journal, None, 1, force=True)
    assert report.status == "partially-undone"
    assert not (tmp_path / "a").exists()


def test_python_action_and_its_reverse(journal: Journal, tmp_path: Path) -> None:
    target = tmp_path / "made-by-python"
    with Executor(journal).change_set("py") as cs:
        cs.call("os:mkdir", [str(target)], undo=("os:rmdir", [str(target)]))
    assert target.is_dir()
    undo_change(journal, None, 1)
    assert not target.exists()


def test_python_action_errors_are_typed(journal: Journal, tmp_path: Path) -> None:
    with pytest.raises(ServiceError, match="FileNotFoundError"), Executor(journal).change_set("py") as cs:
        cs.call("os:remove", [str(tmp_path / "absent")], no_undo=True)
    with pytest.raises(JournalError, match="cannot import"), Executor(journal).change_set("py") as cs:
        cs.call("no_such_module_zk:f", [], no_undo=True)


def test_remove_tree_and_restore(journal: Journal, tmp_path: Path) -> None:
    tree = tmp_path / "releases" / "1"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin" / "run").write_bytes(b"#!/bin/sh\n")
    (tree / "bin" / "run").chmod(0o755)
    (tree / "link").symlink_to("bin/run")
    (tree / "empty").mkdir(mode=0o700)
    with Executor(journal).change_set("rm") as cs:
        cs.remove_tree(tree)
    assert not tree.exists()
    undo_change(journal, None, 1)
    assert (tree / "bin" / "run").read_bytes() == b"#!/bin/sh\n"
    assert _mode(tree / "bin" / "run") == 0o755
    assert os.readlink(tree / "link") == "bin/run"
    assert _mode(tree / "empty") == 0o700


def test_remove_tree_without_backup_cannot_be_undone(journal: Journal, tmp_path: Path) -> None:
    tree = tmp_path / "old"
    tree.mkdir()
    with Executor(journal).change_set("rm") as cs:
        cs.remove_tree(tree, backup=False)
    assert not journal.get_change(1).undoable
    with pytest.raises(JournalError, match="cannot be undone automatically"):
        undo_change(journal, None, 1)


def test_registry_is_extensible_and_refuses_unknown_kinds(journal: Journal, tmp_path: Path) -> None:
    calls: list[tuple[str, bool]] = []

    class Reload(ActionHandler):
        kind = "service_reload"

        def describe(self, params: dict) -> str:
            return f"reload {params['service']}"

        def execute(self, params: dict, noaction: bool) -> None:
            calls.append((params["service"], noaction))

    registry = default_registry()
    registry.register(Reload())
    with pytest.raises(JournalError, match="already registered"):
        registry.register(Reload())
    with Executor(journal, registry=registry).change_set("reload") as cs:
        cs.task("service_reload", {"service": "web"}, undo=("service_reload", {"service": "web"}))
    undo_change(journal, registry, 1)
    assert calls == [("web", False), ("web", False)]
    with pytest.raises(JournalError, match="no handler registered for action kind 'bogus'"), \
            Executor(journal).change_set("bad") as cs:
        cs.task("bogus", {}, no_undo=True)


def test_exception_in_the_block_marks_the_change_set_failed(journal: Journal, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), Executor(journal).change_set("w") as cs:
        cs.write_file(tmp_path / "a", b"a")
        raise RuntimeError("boom")
    change = journal.get_change(1)
    assert change.status == FAILED and change.tasks[0].status == DONE
    undo_change(journal, None, 1)
    assert not (tmp_path / "a").exists()
