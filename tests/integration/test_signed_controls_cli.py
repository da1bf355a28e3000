"""`zkdeploy mark|unmark|pin|unpin --sign KEYFILE` against a real ZooKeeper: what each stores, that it
verifies with the public key, the sequence numbers, and what an operator is told (issue 13)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.integration.test_controls_cli import fleet, run  # noqa: F401  (the fixtures)
from zkdeploy.coordination import Store
from zkdeploy.signing import Verifier, generate, load_public

pytestmark = pytest.mark.integration


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Verifier]:
    private, public, _ = generate(tmp_path / "ops.key")
    return private, Verifier([load_public(public)])


def test_signed_marks_verify_and_their_sequence_rises(run, fleet: Store, keys) -> None:  # noqa: F811
    key, verifier = keys
    result = run("mark", "app", "2", "bad", "-m", "broken login", "--yes", "--sign", str(key), "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["signed"] is True and out["seq"] == 1
    result = run("unmark", "app", "2", "-m", "fixed by config", "--sign", str(key))
    assert result.exit_code == 0 and "(signed, sequence 2)" in result.output, result.output
    records = list(fleet.marks("app").values())
    assert [(m.mark, m.seq) for m in records] == [("bad", 1), ("none", 2)]
    assert [verifier.verify_control(m).mark for m in records] == ["bad", "none"]


def test_an_unsigned_record_over_a_signed_one_is_written_with_a_warning(run, fleet: Store, keys) -> None:  # noqa: F811
    key, _ = keys
    assert run("mark", "app", "2", "bad", "-m", "broken", "--yes", "--sign", str(key)).exit_code == 0
    result = run("unmark", "app", "2", "-m", "oops")
    assert result.exit_code == 0
    assert "agents with trusted keys act only on signed records: they ignore this one" in result.output
    assert "zkdeploy unmark app 2 --sign KEYFILE" in result.output


def test_signed_pin_and_unpin_keep_one_rising_sequence(run, fleet: Store, keys) -> None:  # noqa: F811
    key, verifier = keys
    result = run("pin", "prod1", "app", "1", "--forever", "-m", "demo", "--sign", str(key), "--json")
    assert result.exit_code == 0, result.output
    first = json.loads(result.output)["seq"]
    pin = fleet.pin("prod1", "app")
    assert pin is not None and verifier.verify_control(pin).version == "1"
    result = run("unpin", "prod1", "app", "--sign", str(key))
    assert result.exit_code == 0 and "(signed)" in result.output, result.output
    gone = fleet.pin("prod1", "app")
    assert gone is not None and gone.kind == "unpin" and gone.seq > first and not gone.active(0.0)
    assert verifier.verify_control(gone).kind == "unpin"
    assert fleet.pins() == []  # the unpin record is no pin: status and nodes show none
    assert json.loads(run("nodes", "--json").output)  # and listing nodes still works
    result = run("unpin", "prod1", "app")
    assert result.exit_code == 2 and "has no pin" in result.output
    result = run("pin", "prod1", "app", "2", "--forever", "-m", "again", "--sign", str(key), "--json")
    assert result.exit_code == 0 and json.loads(result.output)["replaced"] is None
    again = fleet.pin("prod1", "app")
    assert again is not None and again.seq > gone.seq


def test_a_key_that_is_unprotected_or_missing_is_refused_before_anything_is_written(
        run, fleet: Store, keys) -> None:  # noqa: F811
    key, _ = keys
    os.chmod(key, 0o644)
    result = run("mark", "app", "2", "bad", "-m", "x", "--yes", "--sign", str(key))
    assert result.exit_code == 2 and "accessible to other users" in result.output, result.output
    result = run("pin", "prod1", "app", "1", "--forever", "-m", "x", "--sign", str(key.parent / "nope.key"))
    assert result.exit_code == 2 and "does not exist" in result.output, result.output
    assert fleet.marks("app") == {} and fleet.pin("prod1", "app") is None
