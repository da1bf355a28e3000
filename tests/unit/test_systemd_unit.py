"""conf/zkdeploy-agent.service is a valid, hardened systemd unit.

An operator copies the unit as it is, so the test reads it the way systemd
does: section by section, key by key (a key may repeat), comments ignored.
When `systemd-analyze` is installed it also verifies the unit, and any
complaint (an unknown or misspelt key) fails the test; the key checks run
either way, so the test never skips.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from zkdeploy.config import load_agent_config
from zkdeploy.errors import ConfigError

CONF = Path(__file__).resolve().parents[2] / "conf"
UNIT = CONF / "zkdeploy-agent.service"


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file, each as its (key, value) pairs in file order.

    Follows systemd.syntax(7) as far as this unit needs: `#`/`;` comments,
    `[Section]` headers, `Key=Value` lines, backslash line continuations.
    Raises ValueError on a line that is none of these.
    """
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for number, raw in enumerate(text.splitlines(), 1):
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        header = re.fullmatch(r"\[([A-Za-z]+)\]", line)
        if header:
            current = sections.setdefault(header.group(1), [])
            continue
        if current is None or "=" not in line:
            raise ValueError(f"line {number}: not a section header or Key=Value: {raw!r}")
        key, value = line.split("=", 1)
        current.append((key.strip(), value.strip()))
    return sections


def last(section: list[tuple[str, str]], key: str) -> str:
    """The value systemd uses for a single-valued key: its last assignment."""
    values = [v for k, v in section if k == key]
    assert values, f"{UNIT.name}: [Service] has no {key}="
    return values[-1]


@pytest.fixture(scope="module")
def service() -> list[tuple[str, str]]:
    sections = parse_unit(UNIT.read_text())
    assert set(sections) == {"Unit", "Service", "Install"}
    return sections["Service"]


def test_the_agent_runs_as_a_dedicated_user_not_root(service: list[tuple[str, str]]) -> None:
    assert last(service, "User") == "zkdeploy"
    assert last(service, "Group") == "zkdeploy"
    # When root is needed is written in the unit, next to the drop-in that does it.
    text = UNIT.read_text()
    assert "Services that need root" in text and "User=root" in text


def test_the_sandbox_keys_are_set(service: list[tuple[str, str]]) -> None:
    assert last(service, "NoNewPrivileges") == "yes"
    assert last(service, "ProtectSystem") == "strict"
    assert last(service, "PrivateTmp") == "yes"
    assert last(service, "ProtectHome") == "yes"
    assert int(last(service, "LimitNOFILE")) >= 65536


def test_the_data_dir_of_the_example_agent_file_is_writable(service: list[tuple[str, str]]) -> None:
    """ProtectSystem=strict makes everything read-only but ReadWritePaths."""
    data_dir = load_agent_config(CONF / "agent.yaml").data_dir
    writable = [p for k, v in service if k == "ReadWritePaths" for p in v.split()]
    assert any(data_dir == p.lstrip("-") or data_dir.startswith(p.lstrip("-") + "/") for p in writable), (
        f"data_dir {data_dir} of conf/agent.yaml is not in ReadWritePaths={writable}")


def test_restarting_the_agent_leaves_its_services_running(service: list[tuple[str, str]]) -> None:
    assert last(service, "KillMode") == "process"
    assert last(service, "Restart") == "on-failure"
    # A configuration error is not fixed by restarting in a loop.
    assert last(service, "RestartPreventExitStatus") == str(ConfigError.exit_code)
    # The why is next to the setting, and which service model the unit assumes.
    text = UNIT.read_text()
    comment = text[:text.index("\nKillMode=process")].rsplit("\n\n", 1)[-1]
    assert "systemctl restart zkdeploy-agent" in comment and "systemd-run" in comment


def test_the_agent_logs_to_the_journal(service: list[tuple[str, str]]) -> None:
    assert last(service, "StandardOutput") == "journal"
    assert last(service, "StandardError") == "journal"


def test_the_agent_is_started_with_the_documented_agent_file(service: list[tuple[str, str]]) -> None:
    argv = last(service, "ExecStart").split()
    assert argv[0].endswith("/zkdeploy") and argv[1:] == ["agent", "--config", "/etc/zkdeploy/agent.yaml"]


def test_the_agent_tells_systemd_when_it_is_ready_and_alive(service: list[tuple[str, str]]) -> None:
    """Type=notify with a watchdog: the agent sends READY=1, STATUS=, WATCHDOG=1 and STOPPING=1
    (tests/e2e/test_agent_systemd.py checks it does)."""
    assert last(service, "Type") == "notify"
    assert last(service, "NotifyAccess") == "main"  # the services it starts cannot speak for it
    watchdog = int(last(service, "WatchdogSec"))
    # a ping every WatchdogSec/2 must fit several times in the start and stop timeouts it extends
    assert 10 <= watchdog <= int(last(service, "TimeoutStartSec")) / 2
    assert watchdog <= int(last(service, "TimeoutStopSec")) / 2
    # the watchdog is restarted on failure; the wedge limit is the agent file's, explained in the unit
    assert "watchdog.cycle_limit" in UNIT.read_text()
    assert load_agent_config(CONF / "agent.yaml").watchdog.cycle_limit > watchdog


def test_the_unit_says_how_services_leave_the_agents_cgroup(service: list[tuple[str, str]]) -> None:
    text = UNIT.read_text()
    assert "systemd-run --scope --unit=zkdeploy-<service>" in text
    assert "org.freedesktop.systemd1.manage-units" in text
    # systemd-run talks to systemd over D-Bus, a unix socket
    assert "AF_UNIX" in last(service, "RestrictAddressFamilies").split()
    assert load_agent_config(CONF / "agent.yaml").service_launch.mode == "auto"


def test_systemd_analyze_accepts_the_unit(tmp_path: Path) -> None:
    """Verified by systemd itself when it is installed, by the parser otherwise."""
    text = UNIT.read_text()
    parse_unit(text)  # fails on a malformed line even without systemd
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return
    # verify insists that ExecStart's program exists; the venv is not installed here.
    copy = tmp_path / UNIT.name
    copy.write_text(re.sub(r"(?m)^ExecStart=\S+", "ExecStart=/bin/true", text))
    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (result.stdout + result.stderr).splitlines()
                  if UNIT.name in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


def test_the_parser_rejects_what_systemd_would() -> None:
    with pytest.raises(ValueError, match="line 2"):
        parse_unit("[Service]\nNoNewPrivileges yes\n")
    assert parse_unit("[Service]\nA=1\\\n  2\nA=3\n") == {"Service": [("A", "1 2"), ("A", "3")]}
