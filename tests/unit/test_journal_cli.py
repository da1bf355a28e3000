"""``zkdeploy journal ...`` through click's CliRunner, on a real journal."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from zkdeploy.cli.journal_cmd import journal as journal_group
from zkdeploy.journal import Executor, Journal


@pytest.fixture
def host(tmp_path: Path) -> tuple[Path, Path]:
    """A host tree and a journal with two change sets: 1 undoable, 2 with a step that is not."""
    root = tmp_path / "host"
    root.mkdir()
    (root / "web.conf").write_text("v1")
    (root / "current").symlink_to("releases/1")
    db = tmp_path / "data" / "state" / "journal.db"
    with Journal.open(db) as journal:
        ex = Executor(journal)
        with ex.change_set("web 1 -> 2", deploy_id="d-0000000003") as cs:
            cs.write_file(root / "web.conf", b"v2")
            cs.swap_symlink(root / "current", "releases/2")
        with ex.change_set("clear cache", deploy_id="d-0000000004") as cs:
            cs.run(["true"], no_undo=True)
    return root, db


def invoke(db: Path | None, *args: str, input: str | None = None, env: dict | None = None):
    prefix = ["--journal", str(db)] if db else []
    return CliRunner().invoke(journal_group, [*prefix, *args], input=input, env=env, catch_exceptions=False)


def test_list_text_and_json(host: tuple[Path, Path]) -> None:
    _, db = host
    result = invoke(db, "list")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "CREATED", "STATUS"]
    assert "clear cache" in lines[1] and "NO (cannot be undone automatically)" in lines[1]
    assert lines[2].split()[0] == "1" and lines[2].endswith("web 1 -> 2")
    data = json.loads(invoke(db, "list", "--json", "--limit", "1").stdout)
    assert [c["id"] for c in data] == [2] and data[0]["undoable"] is False


def test_list_since_a_future_date_is_a_bad_input(host: tuple[Path, Path]) -> None:
    _, db = host
    result = invoke(db, "list", "--since", "2999-01-01")
    assert result.exit_code == 2 and "in the future" in result.stderr
    assert invoke(db, "list", "--since", "1h").exit_code == 0
    bad = invoke(db, "list", "--since", "yesterday-ish")
    assert bad.exit_code == 2 and "not a date" in bad.stderr


def test_show(host: tuple[Path, Path]) -> None:
    root, db = host
    result = invoke(db, "show", "1")
    assert result.exit_code == 0
    assert "change set 1: web 1 -> 2" in result.stdout
    assert f"point symlink {root}/current back at releases/1" in result.stdout
    data = json.loads(invoke(db, "show", "2", "--json").stdout)
    assert data["tasks"][0]["undo"]["description"] == "cannot be undone automatically"
    missing = invoke(db, "show", "99")
    assert missing.exit_code == 7 and "no change set 99" in missing.stderr


def test_blame(host: tuple[Path, Path]) -> None:
    root, db = host
    result = invoke(db, "blame", str(root / "web.conf"))
    assert result.exit_code == 0 and "change set 1 (web 1 -> 2)" in result.stdout
    data = json.loads(invoke(db, "blame", str(root / "current"), "--json").stdout)
    assert data["change"]["id"] == 1 and data["task"]["execute"]["kind"] == "symlink_swap"
    nobody = invoke(db, "blame", str(root / "other"))
    assert "no change set in this journal wrote it" in nobody.stdout


def test_backout_steps(host: tuple[Path, Path]) -> None:
    root, db = host
    result = invoke(db, "backout-steps", "1")
    assert result.exit_code == 0
    assert f"ln -sfn releases/1 {root}/current" in result.stdout.splitlines()
    assert "NO AUTOMATIC UNDO: run true" in invoke(db, "backout-steps", "2").stdout


def test_undo_change_asks_then_undoes(host: tuple[Path, Path]) -> None:
    root, db = host
    declined = invoke(db, "undo", "--change", "1", input="n\n")
    assert declined.exit_code == 2 and (root / "web.conf").read_text() == "v2"
    result = invoke(db, "undo", "--change", "1", input="y\n")
    assert result.exit_code == 0, result.stderr
    assert "undid change set 1: web 1 -> 2 -> undone" in result.stdout
    assert (root / "web.conf").read_text() == "v1" and os.readlink(root / "current") == "releases/1"


def test_undo_dry_run_json_changes_nothing(host: tuple[Path, Path]) -> None:
    root, db = host
    result = invoke(db, "undo", "--change", "1", "--dry-run", "--json")
    data = json.loads(result.stdout)
    assert data[0]["dry_run"] is True and [s["position"] for s in data[0]["steps"]] == [2, 1]
    assert (root / "web.conf").read_text() == "v2"


def test_undo_not_undoable_is_refused_unless_forced(host: tuple[Path, Path]) -> None:
    _, db = host
    refused = invoke(db, "undo", "--last", "1", "--yes")
    assert refused.exit_code == 7 and "cannot be undone automatically" in refused.stderr
    assert json.loads(invoke(db, "show", "2", "--json").stdout)["status"] == "done"
    forced = invoke(db, "undo", "--last", "1", "--yes", "--force")
    assert forced.exit_code == 0 and "SKIPPED: run true: cannot be undone automatically" in forced.stdout


def test_undo_needs_exactly_one_selector(host: tuple[Path, Path]) -> None:
    _, db = host
    assert invoke(db, "undo").exit_code == 2
    assert invoke(db, "undo", "--last", "1", "--change", "1").exit_code == 2
    future = invoke(db, "undo", "--since", "2999-01-01T00:00:00Z", "--yes")
    assert future.exit_code == 2 and "in the future" in future.stderr


def test_journal_location_from_env_and_data_dir(host: tuple[Path, Path], tmp_path: Path) -> None:
    _, db = host
    by_env = invoke(None, "list", "--json", env={"ZKDEPLOY_JOURNAL": str(db)})
    assert len(json.loads(by_env.stdout)) == 2
    by_data = invoke(None, "--data", str(tmp_path / "data"), "list", "--json", env={"ZKDEPLOY_JOURNAL": ""})
    assert len(json.loads(by_data.stdout)) == 2
    neither = invoke(None, "list", env={"ZKDEPLOY_JOURNAL": ""})
    assert neither.exit_code == 2 and "no journal given" in neither.stderr


def test_a_corrupt_or_missing_journal_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "journal.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    result = invoke(bad, "list")
    assert result.exit_code == 7 and str(bad) in result.stderr
    assert bad.read_bytes() == b"this is not sqlite" * 100
    missing = invoke(tmp_path / "none.db", "list")
    assert missing.exit_code == 7 and "no journal at" in missing.stderr
    assert not (tmp_path / "none.db").exists()


def test_recover_command(host: tuple[Path, Path]) -> None:
    _, db = host
    result = invoke(db, "recover")
    assert result.exit_code == 0 and "nothing to recover" in result.stdout


def test_registered_on_the_main_group(host: tuple[Path, Path]) -> None:
    from zkdeploy.cli.main import cli

    _, db = host
    result = CliRunner().invoke(cli, ["journal", "--journal", str(db), "show", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["description"] == "web 1 -> 2"
