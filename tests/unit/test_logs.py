"""One logging setup: JSON lines with the node, fields and traceback; repeats folded; a quiet CLI."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from zkdeploy import logs


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_the_node_the_fields_and_the_traceback(restore_logging, capsys) -> None:
    logs.setup(fmt="json", node="web-a01")
    log = logging.getLogger("zkdeploy.test")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("restart failed", extra={"service": "web", "deploy": "d-0000000007"})
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["node"] == "web-a01" and line["service"] == "web" and line["deploy"] == "d-0000000007"
    assert line["msg"] == "restart failed" and line["level"] == "ERROR" and line["ts"].endswith("+00:00")
    assert "ValueError: boom" in line["traceback"]


def test_a_message_repeated_every_second_is_logged_once_then_counted(restore_logging, capsys) -> None:
    logs.setup(fmt="plain", node="n1")
    filt = logging.getLogger().handlers[0].filters[0]
    assert isinstance(filt, logs.RepeatFilter)
    log = logging.getLogger("zkdeploy.coordination")
    for _ in range(20):
        log.warning("ZooKeeper session suspended")
    assert capsys.readouterr().err.count("ZooKeeper session suspended") == 1
    filt._seen = {k: (v[0] - 3600, v[1]) for k, v in filt._seen.items()}  # the window has passed
    log.warning("ZooKeeper session suspended")
    assert "(and 19 more like it in the last 30s)" in capsys.readouterr().err


def test_the_cli_says_one_line_when_zookeeper_is_unreachable() -> None:
    proc = subprocess.run([sys.executable, "-m", "zkdeploy.cli.main", "--zk", "127.0.0.1:1", "--zk-timeout", "1",
                           "status"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach ZooKeeper at 127.0.0.1:1"), proc.stderr
