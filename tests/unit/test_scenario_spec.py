"""Scenario files: what a valid one looks like, and every mistake reported at once with its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from zkdeploy.config.scenario import load_scenario
from zkdeploy.errors import ConfigError

GOOD = """
scenario: web-2.0
deploy: web@2.0
select: "class=web and env=prod"
expect: "3..4"
steps:
  - {name: block, do: lb_block, check: traffic_blocked, timeout: 5, retries: 2}
  - {name: install, do: install, check: version_answers, url: "http://127.0.0.1:8080/version"}
  - {name: load, do: command, command: "true", check: command, check_command: "test 1 -lt 8"}
  - {name: unblock, do: lb_unblock, check: traffic_flows}
"""


def test_a_good_scenario(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(GOOD)
    scenario = load_scenario(tmp_path / "s.yaml")
    assert (scenario.service, scenario.version, scenario.expect) == ("web", "2.0", "3..4")
    assert [s.do for s in scenario.steps] == ["lb_block", "install", "command", "lb_unblock"]
    assert scenario.steps[0].retries == 2 and scenario.steps[3].retries == 3


@pytest.mark.parametrize("change, message", [
    (("do: install, check: version_answers, url", "do: command, command: x, check: version_answers, url"),
     "exactly one 'do: install' step"),
    (("deploy: web@2.0", "deploy: web"), "SERVICE@VERSION"),
    (('select: "class=web and env=prod"', 'select: "class=web and"'), "select"),
    (('expect: "3..4"', 'expect: "4..3"'), "MIN is above MAX"),
    (('check_command: "test 1 -lt 8"', 'bogus: 1'), "steps.2.bogus"),
    (("{name: unblock, do: lb_unblock, check: traffic_flows}", "{name: unblock, do: command, command: x}"),
     "must unblock it"),
    (("check: traffic_blocked, timeout: 5", "check: blocked, timeout: 5"), "steps.0.check"),
    ((', url: "http://127.0.0.1:8080/version"', ""), "needs 'url'"),
])
def test_mistakes_are_named_with_their_key(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    assert change[0] in GOOD
    (tmp_path / "s.yaml").write_text(GOOD.replace(*change))
    with pytest.raises(ConfigError, match=r"s\.yaml: invalid scenario") as err:
        load_scenario(tmp_path / "s.yaml")
    assert message in str(err.value)


def test_block_after_install_is_refused(tmp_path: Path) -> None:
    lines = GOOD.splitlines()
    block, install = lines[6], lines[7]
    lines[6], lines[7] = install, block
    (tmp_path / "s.yaml").write_text("\n".join(lines))
    with pytest.raises(ConfigError, match="'lb_block' must come before 'install'"):
        load_scenario(tmp_path / "s.yaml")
