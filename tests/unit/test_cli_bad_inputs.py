"""A table of bad inputs across the CLI (issue 14): each exits with its documented code (2: bad
input, refused, nothing changed) and one clear line, never a traceback, and is refused before
connecting: --zk names a port where nothing listens, so a command that connected first would
exit 3 instead."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from zkdeploy.cli.main import cli

NO_ZK = ["--zk", "127.0.0.1:1", "--zk-timeout", "1"]

#: (argv, expected exit code, a fragment of the message); {p} is a valid payload, {d} a scratch directory
CASES: list[tuple[list[str], int, str]] = [
    # global options
    (["--root", "relative", "status"], 2, "--root 'relative': expected an absolute znode path"),
    (["--root", "/dc/", "nodes"], 2, "--root '/dc/'"),
    (["--zk-timeout", "-5", "status"], 2, "--zk-timeout -5: expected a number of seconds greater than 0"),
    (["--zk-timeout", "0", "deploys"], 2, "--zk-timeout 0"),
    (["--zk-timeout", "soon", "status"], 2, "'soon' is not a valid float"),
    # deploy
    (["deploy"], 2, "Missing argument"),
    (["deploy", "../etc"], 2, "service"),
    (["deploy", "web@1/../2"], 2, "version"),
    (["deploy", "web@2", "--max-failures", "lots"], 2, "max_failures 'lots': expected a count or a percentage"),
    (["deploy", "web@2", "--max-failures", "-1"], 2, "max_failures '-1': expected a count"),
    (["deploy", "web@2", "--max-failures", "150%"], 2, "between 0% and 100%"),
    (["deploy", "web@2", "--waves", "{d}/w.yaml", "--no-waves"], 2, "give --waves FILE or --no-waves, not both"),
    (["deploy", "web@2", "--waves", "{d}/missing.yaml"], 2, "missing.yaml"),
    (["deploy", "web@2", "--expect", "3"], 2, "--expect needs --select"),
    (["deploy", "web@2", "--select", "env=prod and (", "--expect", "3"], 2, "select"),
    (["deploy", "web@2", "--select", "env=prod", "--expect", "lots"], 2, "lots"),
    (["deploy", "web@2", "--timeout", "0"], 2, "--timeout 0"),
    # stage
    (["stage", "../x", "1", "{p}"], 2, "service"),
    (["stage", "web", "1/2", "{p}"], 2, "version"),
    (["stage", "web", "2", "{d}/missing.tar.gz"], 2, "does not exist or is not a file"),
    (["stage", "web", "2", "{p}", "--seed-until", "0"], 2, "0 is not in the range x>=1"),
    (["stage", "web", "2", "{p}", "--seed-until", "1", "--listen", "nonsense"], 2, "--listen 'nonsense'"),
    (["stage", "web", "2", "{p}", "--seed-until", "1", "--listen", "127.0.0.1:99999"], 2, "port from 0 to 65535"),
    (["stage", "web", "2", "{p}", "--seed-until", "1", "--seed-timeout", "-1"], 2, "--seed-timeout -1"),
    (["stage", "web", "2", "{p}", "--sign", "{d}/no-key"], 2, "does not exist"),
    # status, deploys, rollout status
    (["status", "--watch", "--interval", "-1"], 2, "--interval -1: expected a number of seconds greater than 0"),
    (["status", "--watch", "--interval", "0"], 2, "--interval 0"),
    (["status", "--interval", "fast"], 2, "'fast' is not a valid float"),
    (["deploys", "--bogus"], 2, "No such option"),
    (["rollout", "status", "abc"], 2, "'abc' is not a deploy name"),
    (["rollout", "status", "13", "--timeout", "0"], 2, "--timeout 0"),
    (["rollout", "status", "13", "--interval", "-1"], 2, "--interval -1"),
    # abort, pause, resume, promote, rollback
    (["abort"], 2, "name one deploy or give --all"),
    (["abort", "x13", "--yes"], 2, "'x13' is not a deploy name"),
    (["abort", "13", "--all", "--yes"], 2, "not both"),
    (["pause", "d-x"], 2, "'d-x' is not a deploy name"),
    (["resume"], 2, "name one deploy or give --all"),
    (["promote", "thirteen"], 2, "'thirteen' is not a deploy name"),
    (["rollback", "../x"], 2, "service"),
    (["rollback", "web", "--to", "../1"], 2, "version"),
    (["rollback", "web", "--to", "1", "--timeout", "-1"], 2, "--timeout -1"),
    # killswitch, marks, pins, nodes
    (["killswitch", "on"], 2, "killswitch on needs --message TEXT"),
    (["killswitch", "sideways"], 2, "'sideways' is not one of"),
    (["mark", "web", "1", "worse", "-m", "x"], 2, "'worse' is not one of"),
    (["mark", "../x", "1", "bad", "-m", "x", "--yes"], 2, "service"),
    (["pin", "n1", "web", "1", "-m", "x"], 2, "--until"),
    (["pin", "n1", "web", "1", "--for", "soon", "-m", "x"], 2, "soon"),
    (["nodes", "forget", "../x", "--yes"], 2, "node"),
    (["nodes", "--select", "env=prod and ("], 2, "select"),
    # history, undo, journal
    (["history", "--since", "2999-01-01"], 2, "in the future"),
    (["history", "--since", "yesterday-ish"], 2, "is not a date"),
    (["history", "--limit", "0"], 2, "0 is not in the range x>=1"),
    (["undo", "--node", "n1", "--yes"], 2, "give exactly one of --last N or --since DATE"),
    (["undo", "--node", "../x", "--last", "1", "--yes"], 2, "node"),
    (["undo", "--node", "n1", "--last", "0"], 2, "0 is not in the range x>=1"),
    (["undo", "--node", "n1", "--since", "2999-01-01", "--yes"], 2, "in the future"),
    (["journal", "--journal", "{d}/j.db", "list", "--since", "2999-01-01"], 2, "in the future"),
    (["journal", "--journal", "{d}/j.db", "undo", "--yes"], 2, "give exactly one of --last N, --since DATE"),
    (["journal", "--journal", "{d}/j.db", "show", "one"], 2, "'one' is not a valid integer"),
    # services
    (["services", "apply", "{d}/missing.yaml"], 2, "missing.yaml"),
    (["services", "apply", "{d}/dup.yaml"], 2, "dup.yaml"),
    (["plan", "../x"], 2, "service"),
]


@pytest.fixture
def scratch(tmp_path: Path) -> dict[str, str]:
    payload = tmp_path / "p.tar.gz"
    with tarfile.open(payload, "w:gz") as tar:
        info = tarfile.TarInfo("VERSION")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"2\n"))
    (tmp_path / "w.yaml").write_text("- {name: all, select: '*'}\n")
    (tmp_path / "dup.yaml").write_text("services:\n  db: {quorum: 1, start: x}\n  db: {quorum: 2, start: y}\n")
    return {"p": str(payload), "d": str(tmp_path)}


def test_the_table_holds_at_least_40_bad_inputs() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize("argv, code, fragment", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_a_bad_input_exits_with_its_code_and_one_clear_message(argv: list[str], code: int, fragment: str,
                                                               scratch: dict[str, str], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ZKDEPLOY_JOURNAL", raising=False)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(cli, [*NO_ZK, *(a.format(**scratch) for a in argv)], input="")
    text = result.output
    assert result.exit_code == code, (result.exit_code, text, result.exception)
    assert fragment in " ".join(text.split()), text
    assert "Traceback" not in text
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing was created (no journal, no file)
