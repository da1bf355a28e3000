"""The CLI's contract without a ZooKeeper (issue 14, defects 3, 4, 7, 8, 10): every input is
checked before connecting, so a bad one exits 2 with one line saying what is wrong, even when
no ZooKeeper answers (--zk 127.0.0.1:1 would exit 3 if the command connected first)."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from zkdeploy.cli import output
from zkdeploy.cli.context import deploy_name
from zkdeploy.cli.main import cli
from zkdeploy.errors import ConfigError

NO_ZK = ["--zk", "127.0.0.1:1", "--zk-timeout", "1"]


def run(*args: str, zk: list[str] = NO_ZK) -> Result:
    return CliRunner().invoke(cli, [*zk, *args])


def refused(result: Result, fragment: str) -> None:
    """Exit 2, the message on one of the lines, no traceback: what a user sees for a bad input."""
    text = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert result.exit_code == 2, (result.exit_code, text, result.exception)
    assert fragment in text, text
    assert "Traceback" not in text and not isinstance(result.exception, (ValueError, TypeError, OSError))


def payload(tmp_path: Path) -> Path:
    path = tmp_path / "p.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("VERSION")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"2\n"))
    return path


# -- defect 3: exit codes -----------------------------------------------------------------
def test_a_bad_service_name_given_to_deploy_exits_2_without_zookeeper() -> None:
    refused(run("deploy", "../etc@1.0"), "service")


def test_a_bad_version_given_to_deploy_exits_2_without_zookeeper() -> None:
    refused(run("deploy", "web@1/../2"), "version")


def test_max_failures_lots_exits_2_without_zookeeper() -> None:
    refused(run("deploy", "web@1.0", "--max-failures", "lots"), "max_failures 'lots'")


def test_stage_with_a_nonsense_listen_address_refuses_before_staging(tmp_path: Path) -> None:
    refused(run("stage", "web", "1.0", str(payload(tmp_path)), "--seed-until", "1", "--listen", "nonsense"),
            "--listen 'nonsense'")


@pytest.mark.parametrize("cmd", [["history"], ["undo", "--node", "n1"]])
def test_since_in_the_future_exits_2_in_history_and_undo(cmd: list[str]) -> None:
    refused(run(*cmd, "--since", "2999-01-01"), "in the future")


def test_since_in_the_future_exits_2_in_journal_list_too(tmp_path: Path) -> None:
    refused(run("journal", "--journal", str(tmp_path / "j.db"), "list", "--since", "2999-01-01"), "in the future")


def test_the_top_level_help_lists_every_exit_code() -> None:
    text = run("--help").output
    for code in ("0 ok", "2 bad input", "3 ZooKeeper", "4 rollout", "5 payload", "6 service", "7 journal",
                 "130 interrupted"):
        assert code in " ".join(text.split()), code


# -- defect 4: no traceback for numbers out of range ----------------------------------------
@pytest.mark.parametrize("interval", ["-1", "0", "nan"])
def test_status_watch_with_an_interval_not_above_0_exits_2(interval: str) -> None:
    refused(run("status", "--watch", "--interval", interval), "--interval")


@pytest.mark.parametrize("root", ["relative", "dc/x", "/dc/", "//dc"])
def test_a_root_that_is_not_an_absolute_znode_path_exits_2(root: str) -> None:
    refused(run("--root", root, "status"), "--root")


@pytest.mark.parametrize("timeout", ["-5", "0"])
def test_a_zk_timeout_not_above_0_exits_2(timeout: str) -> None:
    refused(run("status", zk=["--zk", "127.0.0.1:1", "--zk-timeout", timeout]), "--zk-timeout")


# -- defect 7: short deploy names --------------------------------------------------------------
@pytest.mark.parametrize("text", ["13", "d-13", "d-0000000013", " 13 "])
def test_a_short_deploy_name_means_the_full_one(text: str) -> None:
    assert deploy_name(text) == "d-0000000013"


@pytest.mark.parametrize("text", ["", "d-", "x13", "13a", "d-00000000013"])
def test_what_is_not_a_deploy_name_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="not a deploy name"):
        deploy_name(text)


# -- defect 8: output into a file or pipe does not wrap -----------------------------------------
def test_a_table_printed_into_a_pipe_keeps_each_row_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    long = "x" * 150
    output.table(None, ["SERVICE", "ROLLOUT"], [["web", f"waiting for {long} to come back"]])
    output.say(f"a line of {long} words that goes on")
    out = capsys.readouterr().out.splitlines()
    assert any(re.search(rf"web\s+waiting for {long} to come back", line) for line in out), out
    assert f"a line of {long} words that goes on" in out


# -- defect 10: one time format in --json -------------------------------------------------------
def test_json_times_are_iso_8601_utc_at_any_depth(capsys: pytest.CaptureFixture[str]) -> None:
    output.emit_json({"created": 0, "finished": None, "deploys": [{"since": 1.5, "wave_log": [{"opened": 60}]}],
                      "at": "2026-01-01T00:00:00+00:00", "max_failures": 3, "on": True, "verified": False,
                      "tasks": [{"params": {"at": 5, "until": 7}}]})
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"created": "1970-01-01T00:00:00.000000+00:00", "finished": None,
                       "deploys": [{"since": "1970-01-01T00:00:01.500000+00:00",
                                    "wave_log": [{"opened": "1970-01-01T00:01:00.000000+00:00"}]}],
                       "at": "2026-01-01T00:00:00+00:00", "max_failures": 3, "on": True, "verified": False,
                       "tasks": [{"params": {"at": 5, "until": 7}}]}  # a journal action's parameters stay as they are


def test_one_line_json_is_one_document_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    output.emit_json({"a": [1, 2], "b": {"c": "d"}}, one_line=True)
    output.emit_json({"e": 1}, one_line=True)
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == [{"a": [1, 2], "b": {"c": "d"}},
                                                                                     {"e": 1}]
