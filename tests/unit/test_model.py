"""The records kept in ZooKeeper: JSON round trip and corrupt data."""

from __future__ import annotations

import json

import pytest

from zkdeploy.errors import CoordinationError
from zkdeploy.model import DONE, HALTED, PENDING, STOPPED, CurrentEntry, DeployEntry, Killswitch, NodeRecord, Release


def test_node_record_round_trip() -> None:
    record = NodeRecord(node="n1", address="10.0.0.1", services=("web", "db"), labels={"rack": "r1"},
                        agent_version="0.1", pid=42, started=1700000000.5)
    back = NodeRecord.from_bytes(record.to_bytes(), zversion=7)
    assert back == record
    assert back.services == ("web", "db")
    assert back.labels == {"rack": "r1"}
    assert back.zversion == 7


@pytest.mark.parametrize("record", [
    CurrentEntry(node="n1", version="2.0", state="online", phase="checking", target="2.0", since=5.0, detail="ok"),
    CurrentEntry(node="n2"),
    Release(service="web", version="2.0", sha256="ab" * 32, size=10, origin="http://x/p.tgz", staged_by="me",
            staged_at=3.0, info_hash=None),
    Release(service="web", version="2.1", info_hash="cd" * 20),
    Killswitch(message="maintenance", by="ops", since=9.0),
])
def test_records_round_trip(record: object) -> None:
    cls = type(record)
    assert cls.from_bytes(record.to_bytes()) == record  # type: ignore[attr-defined]


def test_to_bytes_is_sorted_json_without_the_znode_version() -> None:
    record = CurrentEntry(node="n1", version="1.0", zversion=12)
    data = json.loads(record.to_bytes())
    assert "zversion" not in data
    assert list(data) == sorted(data)
    assert record.to_bytes() == CurrentEntry(node="n1", version="1.0", zversion=3).to_bytes()


def test_deploy_entry_round_trip_takes_its_name_from_the_znode() -> None:
    entry = DeployEntry(name="deploy-0000000004", service="web", version="2.0", state=HALTED, group="g1",
                        requested_by="alice", created=1.0, finished=None, max_failures=1,
                        failures=({"node": "n1", "error": "boom"},), message="1 failure")
    raw = entry.to_bytes()
    assert "name" not in json.loads(raw)
    back = DeployEntry.from_bytes(raw, zversion=2, name="deploy-0000000004")
    assert back == entry
    assert back.failures == ({"node": "n1", "error": "boom"},)
    assert back.is_open


@pytest.mark.parametrize("state, is_open", [(PENDING, True), (HALTED, True), (DONE, False), ("aborted", False)])
def test_deploy_entry_is_open(state: str, is_open: bool) -> None:
    assert DeployEntry(state=state).is_open is is_open


def test_unknown_keys_are_ignored() -> None:
    raw = json.dumps({"node": "n1", "version": "1.0", "from_a_newer_agent": {"x": 1}}).encode()
    entry = CurrentEntry.from_bytes(raw)
    assert entry == CurrentEntry(node="n1", version="1.0")


def test_empty_bytes_give_the_defaults() -> None:
    entry = CurrentEntry.from_bytes(b"")
    assert entry.state == STOPPED
    assert entry.version is None


def test_lists_become_tuples() -> None:
    record = NodeRecord.from_bytes(b'{"services": ["web", "db"]}')
    assert record.services == ("web", "db")
    hash(record.services)


@pytest.mark.parametrize("raw, words", [
    (b"not json", "corrupt CurrentEntry record"),
    (b"{\"node\": ", "corrupt CurrentEntry record"),
    (b"\xff\xfe", "corrupt CurrentEntry record"),
    (b"[1, 2]", "not a JSON object"),
    (b"\"text\"", "not a JSON object"),
    (b"null", "not a JSON object"),
])
def test_corrupt_bytes_raise_coordination_error(raw: bytes, words: str) -> None:
    with pytest.raises(CoordinationError) as info:
        CurrentEntry.from_bytes(raw)
    assert words in str(info.value)
    assert info.value.exit_code == 3


def test_an_unknown_extra_field_is_a_coordination_error() -> None:
    with pytest.raises(CoordinationError) as info:
        CurrentEntry.from_bytes(b"{}", bogus=1)
    assert "corrupt CurrentEntry record" in str(info.value)


def test_evolve_returns_a_changed_copy() -> None:
    entry = CurrentEntry(node="n1", version="1.0", zversion=4)
    changed = entry.evolve(version="2.0")
    assert changed.version == "2.0" and entry.version == "1.0"
    assert changed.zversion == 4
