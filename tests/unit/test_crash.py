"""The crash-injection hook: one list of points in ZKDEPLOY_CRASH_AT, or an in-process handler."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import zkdeploy
from zkdeploy import crash
from zkdeploy.crash import CRASH_ENV, SimulatedCrash, crash_point, matches

REPO = Path(zkdeploy.__file__).resolve().parent.parent


@pytest.mark.parametrize("spec, point, armed", [
    # the journal's points
    ("begin", "begin", True),
    ("end", "begin", False),
    ("3:before", "3:before", True),
    ("3:before", "3:after", False),
    ("3:before", "13:before", False),
    ("undo:2:after", "undo:2:after", True),
    ("2:after", "undo:2:after", False),
    # the agent's points
    ("db:starting", "db:starting", True),
    ("db:starting", "web:starting", False),
    ("*:checking", "web:checking", True),
    ("*:checking", "checking", False),
    # lists, blanks and wildcards anywhere
    ("web:draining, db:stopping ,", "db:stopping", True),
    ("web:draining,db:stopping", "db:starting", False),
    ("undo:*:before", "undo:4:before", True),
    ("", "begin", False),
    (" , ", "begin", False),
])
def test_which_points_a_spec_arms(spec: str, point: str, armed: bool) -> None:
    assert matches(spec, point) is armed


def _child(code: str, spec: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    env["PYTHONPATH"] = str(REPO)
    if spec is not None:
        env[CRASH_ENV] = spec
    return subprocess.run([sys.executable, "-c", f"from zkdeploy.crash import crash_point\n{code}\nprint('alive')"],
                          env=env, capture_output=True, text=True, timeout=30)


def test_an_armed_point_sigkills_the_process() -> None:
    proc = _child("crash_point('db', 'stopping')", "web:draining,*:stopping")
    assert proc.returncode == -signal.SIGKILL and "alive" not in proc.stdout, proc.stderr


def test_points_that_are_not_armed_cost_nothing() -> None:
    proc = _child("crash_point('db', 'starting'); crash_point('3', 'before'); crash_point('begin')", "db:stopping")
    assert proc.returncode == 0 and proc.stdout.strip() == "alive", proc.stderr
    assert _child("crash_point('db', 'stopping')", None).stdout.strip() == "alive"


def test_an_installed_handler_replaces_the_sigkill(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CRASH_ENV, "db:stopping")  # ignored while a handler is installed
    seen: list[str] = []
    with crash.installed(seen.append):
        crash_point("db", "stopping")
        crash_point("undo", "2", "after")
    assert seen == ["db:stopping", "undo:2:after"]


def test_raise_at_raises_a_simulated_crash_that_except_exception_does_not_catch() -> None:
    with crash.installed(crash.raise_at("web:checking")):
        crash_point("web", "starting")
        with pytest.raises(SimulatedCrash) as info:
            try:
                crash_point("web", "checking")
            except Exception:
                pytest.fail("a simulated crash was caught as an Exception")
    assert info.value.point == "web:checking"
    assert str(info.value) == "simulated crash at web:checking"


def test_install_returns_the_previous_handler_and_none_restores_the_environment() -> None:
    first = crash.raise_at("begin")
    assert crash.install(first) is None
    try:
        with crash.installed(crash.raise_at("end")):
            crash_point("begin")  # the inner handler is the one in force
            with pytest.raises(SimulatedCrash):
                crash_point("end")
        with pytest.raises(SimulatedCrash):
            crash_point("begin")  # the outer one is back
    finally:
        assert crash.install(None) is first
    crash_point("begin")  # nothing installed, nothing armed in the environment


def test_the_agent_hook_is_the_same_function() -> None:
    from zkdeploy.agent import restart
    from zkdeploy.journal import CRASH_ENV as journal_env

    assert restart.crash_point is crash_point
    assert journal_env == CRASH_ENV == "ZKDEPLOY_CRASH_AT"
