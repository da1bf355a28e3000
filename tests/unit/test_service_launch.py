"""Launching managed services in transient systemd scopes, or as direct children.

systemd is not PID 1 on the test machines, so the systemd path runs against
a stand-in `systemd-run` on PATH that records its argv and then does what
`systemd-run --scope` does with its own process: exec the command in place.
A stand-in `systemctl` records its argv.  The direct path is tested for real
in test_runner.py and test_service_logs.py.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.conftest import wait_for
from zkdeploy.errors import ConfigError, ServiceError
from zkdeploy.runner.launch import DIRECT, SYSTEMD, Launch, resolve, unit_name
from zkdeploy.runner.process import ManagedProcess, RunnerSettings

FAKE = """#!{python}
import json, os, sys
with open({record!r}, "a") as f:
    f.write(json.dumps([os.path.basename(sys.argv[0])] + sys.argv[1:]) + "\\n")
if os.path.basename(sys.argv[0]) == "systemctl":
    sys.exit(0)
if {fail!r}:
    sys.stderr.write("Failed to start transient scope unit: Access denied\\n")
    sys.exit(1)
command = sys.argv[sys.argv.index("--") + 1:]
os.execvp(command[0], command)
"""


class FakeSystemd:
    def __init__(self, bindir: Path, fail: bool = False) -> None:
        self.bindir = bindir
        self.record = bindir / "calls.jsonl"
        bindir.mkdir(parents=True, exist_ok=True)
        for name in ("systemd-run", "systemctl"):
            path = bindir / name
            path.write_text(FAKE.format(python=sys.executable, record=str(self.record), fail=fail))
            path.chmod(0o755)
        self.systemd_run = str(bindir / "systemd-run")

    def calls(self, program: str) -> list[list[str]]:
        if not self.record.exists():
            return []
        return [c[1:] for c in map(json.loads, self.record.read_text().splitlines()) if c[0] == program]


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeSystemd:
    made = FakeSystemd(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{made.bindir}{os.pathsep}{os.environ['PATH']}")
    return made




# --------------------------------------------------------------------------- names and argv


@pytest.mark.parametrize(("service", "unit"), [
    ("web", "zkdeploy-web.scope"),
    ("pay-api", "zkdeploy-pay\\x2dapi.scope"),
    ("c++_1.2", "zkdeploy-c\\x2b\\x2b_1.2.scope"),
])
def test_scope_names_are_escaped_as_systemd_escape_does(service: str, unit: str) -> None:
    assert unit_name(service) == unit


def test_direct_mode_runs_the_command_as_it_is() -> None:
    assert Launch().wrap(["/bin/sh", "-c", "x"], unit="zkdeploy-web.scope", description="d") == ["/bin/sh", "-c", "x"]


def test_systemd_mode_wraps_the_command_in_a_collected_scope() -> None:
    how = Launch(SYSTEMD, "/usr/bin/systemd-run", "zkdeploy.slice", ("MemoryMax=1G", "CPUWeight=50"))
    assert how.wrap(["/bin/sh", "-c", "x"], unit="zkdeploy-web.scope", description="zkdeploy service web") == [
        "/usr/bin/systemd-run", "--scope", "--quiet", "--collect", "--no-ask-password", "--slice=zkdeploy.slice",
        "--description=zkdeploy service web", "--unit=zkdeploy-web.scope",
        "--property=MemoryMax=1G", "--property=CPUWeight=50", "--", "/bin/sh", "-c", "x"]


# --------------------------------------------------------------------------- resolving the agent file's mode


def test_auto_is_direct_unless_systemd_runs_the_machine_and_the_agent() -> None:
    def probe_ok(_: Launch) -> str | None:
        return None

    def which(_: str) -> str:
        return "/usr/bin/systemd-run"

    unit_env = {"INVOCATION_ID": "0123"}
    how, why = resolve("auto", environ=unit_env, which=which, booted=lambda: False, probe=probe_ok)
    assert how.mode == DIRECT and "not PID 1" in why
    how, why = resolve("auto", environ=unit_env, which=lambda _: None, booted=lambda: True, probe=probe_ok)
    assert how.mode == DIRECT and "systemd-run is not installed" in why
    how, why = resolve("auto", environ={}, which=which, booted=lambda: True, probe=probe_ok)
    assert how.mode == DIRECT and "not started by systemd" in why
    how, why = resolve("auto", environ=unit_env, which=which, booted=lambda: True,
                       probe=lambda _: "Access denied")
    assert how.mode == DIRECT and "cannot make a systemd scope (Access denied)" in why
    how, why = resolve("auto", environ=unit_env, which=which, booted=lambda: True, probe=probe_ok,
                       properties=["MemoryMax=1G"])
    assert how == Launch(SYSTEMD, "/usr/bin/systemd-run", "zkdeploy.slice", ("MemoryMax=1G",))


def test_systemd_mode_probes_with_a_real_systemd_run(fake: FakeSystemd) -> None:
    how, _ = resolve("systemd", slice="apps.slice")
    assert how == Launch(SYSTEMD, fake.systemd_run, "apps.slice", ())
    (probe,) = fake.calls("systemd-run")
    assert probe[:6] == ["--scope", "--quiet", "--collect", "--no-ask-password", "--slice=apps.slice",
                         "--description=zkdeploy: can the agent make scopes?"]
    assert probe[-2:] == ["--", "/bin/true"]


def test_systemd_mode_that_cannot_make_a_scope_stops_the_agent_with_the_reason(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    denied = FakeSystemd(tmp_path / "bin", fail=True)
    monkeypatch.setenv("PATH", f"{denied.bindir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(ConfigError) as info:
        resolve("systemd")
    assert "cannot make a scope: Failed to start transient scope unit: Access denied" in str(info.value)
    assert "service_launch.mode: direct" in str(info.value)
    assert info.value.exit_code == 2
    with pytest.raises(ConfigError, match="systemd-run is not installed"):
        resolve("systemd", which=lambda _: None)


# --------------------------------------------------------------------------- a service in a scope


def test_a_service_and_its_log_pump_start_in_scopes_and_the_scope_is_cleaned_up_on_stop(
        fake: FakeSystemd, tmp_path: Path, kill_after: list[ManagedProcess]) -> None:
    settings = RunnerSettings(Launch(SYSTEMD, fake.systemd_run, "zkdeploy.slice", ("MemoryMax=1G",)),
                              log_max_bytes=1 << 20, log_keep=3)
    managed = ManagedProcess(tmp_path / "run" / "web.pid", tmp_path / "logs" / "web.log", settings)
    kill_after.append(managed)
    pid = managed.start("sh -c 'echo hello from $ZKDEPLOY_SERVICE; exec sleep 30'", cwd=str(tmp_path),
                        env={"ZKDEPLOY_SERVICE": "web"})
    wait_for(lambda: managed.logfile.read_text() == "hello from web\n", 10, "the service's line in its log")

    pump, service = fake.calls("systemd-run")
    assert pump[:7] == ["--scope", "--quiet", "--collect", "--no-ask-password", "--slice=zkdeploy.slice",
                        "--description=zkdeploy log pump of web", "--property=MemoryMax=1G"]
    assert pump[pump.index("--") + 1:][-3:] == [str(managed.logfile), str(1 << 20), "3"]
    assert service[:8] == ["--scope", "--quiet", "--collect", "--no-ask-password", "--slice=zkdeploy.slice",
                           "--description=zkdeploy service web", "--unit=zkdeploy-web.scope",
                           "--property=MemoryMax=1G"]
    assert service[service.index("--") + 1:][:2] == ["/bin/sh", "-c"]
    # systemd-run --scope execs in place: the pid the agent recorded is the service's
    record = json.loads(managed.pidfile.read_text())
    assert record["pid"] == pid and record["unit"] == "zkdeploy-web.scope"
    assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:2] == [b"sleep", b"30"]
    assert os.getsid(pid) == pid

    assert managed.stop(timeout=5) is True
    assert not managed.running()
    assert fake.calls("systemctl") == [["kill", "--signal=SIGKILL", "zkdeploy-web.scope"]]


def test_a_direct_service_has_no_scope_to_clean_up(fake: FakeSystemd, tmp_path: Path,
                                                   kill_after: list[ManagedProcess]) -> None:
    managed = ManagedProcess(tmp_path / "run" / "web.pid", tmp_path / "logs" / "web.log",
                             RunnerSettings(Launch(DIRECT)))
    kill_after.append(managed)
    managed.start("sleep 30", cwd=str(tmp_path), env={})
    assert "unit" not in json.loads(managed.pidfile.read_text())
    assert managed.stop(timeout=5) is True
    assert fake.calls("systemd-run") == [] and fake.calls("systemctl") == []


def test_a_scope_systemd_refuses_fails_the_start_with_its_message_in_the_log(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kill_after: list[ManagedProcess]) -> None:
    denied = FakeSystemd(tmp_path / "bin", fail=True)
    settings = RunnerSettings(Launch(SYSTEMD, denied.systemd_run), log_max_bytes=0)
    managed = ManagedProcess(tmp_path / "run" / "web.pid", tmp_path / "logs" / "web.log", settings)
    kill_after.append(managed)
    try:
        managed.start("sleep 30", cwd=str(tmp_path), env={})
    except ServiceError as exc:  # seen at once, or the service is found gone right after
        assert "exited" in str(exc) and f"see {managed.logfile}" in str(exc)
    wait_for(lambda: not managed.running(), 5, "the refused start to be seen as not running")
    assert "Access denied" in managed.logfile.read_text()
