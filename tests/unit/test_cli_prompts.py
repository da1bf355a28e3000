"""Declining a confirmation exits 2, "refused, nothing changed", as README's exit-code table says
(not click's "Aborted!" and 1); here for ``journal undo``, on a real journal (the commands that ask
through ZooKeeper are in tests/integration/test_cli_contract.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from zkdeploy.cli.main import cli
from zkdeploy.journal import Executor, Journal


@pytest.fixture
def journal_file(tmp_path: Path) -> Path:
    """A journal with one undoable change set that wrote ``web.conf`` (now ``v2``)."""
    (tmp_path / "web.conf").write_text("v1")
    db = tmp_path / "state" / "journal.db"
    with Journal.open(db) as journal, Executor(journal).change_set("web 1 -> 2") as cs:
        cs.write_file(tmp_path / "web.conf", b"v2")
    return db


@pytest.mark.parametrize("answer", ["n\n", ""], ids=["no", "end of input"])
def test_declining_journal_undo_exits_2_and_undoes_nothing(journal_file: Path, answer: str) -> None:
    result = CliRunner().invoke(cli, ["journal", "--journal", str(journal_file), "undo", "--last", "1"],
                                input=answer)
    assert result.exit_code == 2, result.output
    assert "not confirmed: nothing was changed" in result.output and "Aborted!" not in result.output
    assert (journal_file.parent.parent / "web.conf").read_text() == "v2"


def test_answering_yes_undoes(journal_file: Path) -> None:
    result = CliRunner().invoke(cli, ["journal", "--journal", str(journal_file), "undo", "--last", "1"],
                                input="y\n")
    assert result.exit_code == 0, result.output
    assert (journal_file.parent.parent / "web.conf").read_text() == "v1"
