"""Signed release marks and pins (issue 13): what an agent with trusted keys acts on, and what it ignores.

The record checks and the ControlGuard's bookkeeping are tested on their own;
the fleet tests run real agents' decision code on the in-memory store
(zkdeploy.testing.simfleet) with their guard on, as test_signing.py does for
releases.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from zkdeploy.agent.signatures import ControlGuard, ReleaseGuard
from zkdeploy.errors import SignatureError
from zkdeploy.model import DONE, HALTED, Mark, Pin, Release
from zkdeploy.signing import (
    SIGNATURE_BLOB,
    HighWater,
    Verifier,
    control_record,
    new_record,
    next_pin_seq,
    sign,
    sign_mark,
    sign_pin,
)
from zkdeploy.testing.simfleet import SimFleet


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _mark(version: str, how: str = "bad", at: float = 1.0, by: str = "ops") -> Mark:
    return Mark(service="web", version=version, mark=how, by=by, at=at, why="story")


def _pin(version: str, node: str = "n1", kind: str = "pin", until: float | None = None) -> Pin:
    return Pin(node=node, service="web", version=version, until=until, by="ops", at=1.0, why="demo", kind=kind)


# -- the records -----------------------------------------------------------------------------------
def test_a_signed_mark_and_pin_verify_and_carry_every_field_in_the_signed_record(key: Ed25519PrivateKey) -> None:
    verifier = Verifier([key.public_key()])
    mark = sign_mark(key, _mark("2"), seq=4)
    record = verifier.verify_control(mark)
    assert (record.kind, record.service, record.version, record.mark, record.seq) == ("mark", "web", "2", "bad", 4)
    pin = sign_pin(key, _pin("1", until=99.0), seq=7)
    record = verifier.verify_control(pin)
    assert (record.kind, record.node, record.version, record.until, record.seq) == ("pin", "n1", "1", 99.0, 7)
    # every field is covered: change any one and the signature no longer matches
    for field, value in (("version", "3"), ("mark", "good"), ("by", "x"), ("at", 2.0), ("why", "other"),
                         ("seq", 5), ("service", "db")):
        with pytest.raises(SignatureError, match="forged or tampered"):
            verifier.verify_control(dataclasses.replace(mark, **{field: value}))
    for field, value in (("node", "n2"), ("until", None), ("version", "2"), ("kind", "unpin"), ("seq", 8)):
        with pytest.raises(SignatureError, match="forged or tampered"):
            verifier.verify_control(dataclasses.replace(pin, **{field: value}))
    # what is stored is what is verified: a signed mark survives its JSON round trip
    assert verifier.verify_control(Mark.from_bytes(mark.to_bytes())) == control_record(mark)


@pytest.mark.parametrize("case, message", [
    ("unsigned", "not signed"),
    ("unknown key", "does not trust"),
    ("forged", "does not match"),
    ("garbage", "malformed"),
])
def test_refused_marks_say_why(key: Ed25519PrivateKey, case: str, message: str) -> None:
    verifier = Verifier([key.public_key()])
    stranger = Ed25519PrivateKey.generate()
    mark = _mark("2")
    if case == "unknown key":
        mark = sign_mark(stranger, mark, 1)
    elif case == "forged":  # signed by a stranger, claiming the trusted key's id
        mark = sign_mark(stranger, mark, 1).evolve(key=sign_mark(key, mark, 1).key)
    elif case == "garbage":
        mark = mark.evolve(key="k", sig="%%%")
    with pytest.raises(SignatureError, match=message):
        verifier.verify_control(mark)


def test_a_pin_sequence_stays_above_the_record_it_replaces_and_above_a_deleted_chain() -> None:
    assert next_pin_seq(None, now=1000.0) == 1000
    assert next_pin_seq(_pin("1").evolve(seq=5000), now=1000.0) == 5001
    assert next_pin_seq(_pin("1").evolve(seq=5), now=1000.0) == 1000  # an unsigned unpin deleted seq 5000?


def test_a_release_record_cannot_be_signed_as_a_control_kind(key: Ed25519PrivateKey) -> None:
    with pytest.raises(ValueError, match="release record"):
        sign(key, new_record("web", "1", "a" * 64, 1, 1, kind="mark"))


# -- the guard's bookkeeping -------------------------------------------------------------------------
class _Journal:
    """The host seam the guard journals through (a failed change set per refusal)."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str]] = []

    def change_set(self, description: str) -> _Journal:
        self.entries.append((description, ""))
        return self

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        self.entries[-1] = (self.entries[-1][0], repr(exc))
        return False


class _Host:
    def __init__(self) -> None:
        self.node = "n1"
        self.executor = _Journal()


def _guard(key: Ed25519PrivateKey, tmp_path: Path) -> tuple[ControlGuard, _Journal]:
    host = _Host()
    return ControlGuard(host, Verifier([key.public_key()]), tmp_path), host.executor  # type: ignore[arg-type]


def test_the_highest_signed_sequence_counts_and_a_replayed_older_mark_changes_nothing(
        key: Ed25519PrivateKey, tmp_path: Path) -> None:
    guard, journal = _guard(key, tmp_path)
    bad = sign_mark(key, _mark("2", "bad", at=1.0), 1)
    unmarked = sign_mark(key, _mark("2", "none", at=2.0), 2)
    records = {"m-0000000001": bad, "m-0000000002": unmarked}
    assert guard.marks("web", records) == ({}, {})
    records["m-0000000003"] = bad  # the old bad mark copied in again, after the unmark
    assert guard.marks("web", records) == ({}, {})
    assert any("replayed" in d and "SignatureError" in why for d, why in journal.entries)
    # a newer signed mark counts, whatever its `at` says
    records["m-0000000004"] = sign_mark(key, _mark("2", "badfwd", at=0.5), 3)
    counted, _ = guard.marks("web", records)
    assert counted["2"].mark == "badfwd"


def test_unsigned_and_forged_marks_are_ignored_and_journalled_and_an_unsigned_bad_mark_only_halts(
        key: Ed25519PrivateKey, tmp_path: Path) -> None:
    guard, journal = _guard(key, tmp_path)
    stranger = Ed25519PrivateKey.generate()
    records = {
        "m-0000000001": _mark("1", "none"),  # unsigned unmark: ignored
        "m-0000000002": sign_mark(key, _mark("2", "good"), 1),
        "m-0000000003": _mark("2", "bad", by="zkdeploy on n2"),  # a failed gate, after the signed mark
        "m-0000000004": sign_mark(stranger, _mark("3", "bad"), 2),  # forged: ignored
        "m-0000000005": dataclasses.replace(sign_mark(key, _mark("4", "good"), 3), mark="badfwd"),  # tampered
        "m-0000000006": _mark("4", "badfwd"),  # unsigned badfwd: ignored
        "m-0000000007": sign_mark(key, _mark("5", "bad").evolve(service="db"), 4),  # db's mark copied here
    }
    counted, halting = guard.marks("web", records)
    assert {v: m.mark for v, m in counted.items()} == {"2": "good"}
    assert set(halting) == {"2"}
    refused = " ".join(d for d, _ in journal.entries)
    for what in ("unsigned mark none of web@1", "mark bad of web@3", "mark badfwd of web@4 (m-0000000005",
                 "unsigned mark badfwd of web@4", "mark bad of web@5 (m-0000000007"):
        assert what in refused
    assert all("SignatureError" in why for _, why in journal.entries)
    journalled = len(journal.entries)
    guard.marks("web", records)
    assert len(journal.entries) == journalled  # each refusal is journalled once
    # an operator's signed mark after the unsigned bad one decides again
    records["m-0000000007"] = sign_mark(key, _mark("2", "none"), 4)
    counted, halting = guard.marks("web", records)
    assert "2" not in counted and halting == {}


def test_what_the_agent_accepted_survives_a_restart_and_a_deleted_record(key: Ed25519PrivateKey,
                                                                         tmp_path: Path) -> None:
    guard, _ = _guard(key, tmp_path)
    bad = sign_mark(key, _mark("2", "bad"), 1)
    unmarked = sign_mark(key, _mark("2", "none"), 2)
    guard.marks("web", {"m-0000000001": bad, "m-0000000002": unmarked})
    pin = sign_pin(key, _pin("1"), 10)
    assert guard.pin("web", pin) == pin
    again, _ = _guard(key, tmp_path)  # the agent restarts; someone deleted the unmark and the pin meanwhile
    assert again.marks("web", {"m-0000000001": bad}) == ({}, {})
    assert again.pin("web", None) == pin
    assert json.loads((tmp_path / "web.controls.json").read_text())["pin"]["seq"] == 10


def test_a_pin_counts_only_signed_for_this_node_and_newer_and_goes_only_by_a_signed_unpin(
        key: Ed25519PrivateKey, tmp_path: Path) -> None:
    guard, journal = _guard(key, tmp_path)
    assert guard.pin("web", _pin("1")) is None  # unsigned
    assert guard.pin("web", sign_pin(key, _pin("1", node="n2"), 5)) is None  # another node's pin copied here
    first = sign_pin(key, _pin("1"), 5)
    assert guard.pin("web", first) == first
    newer = sign_pin(key, _pin("3"), 6)
    assert guard.pin("web", newer) == newer
    assert guard.pin("web", first) == newer  # replayed
    assert guard.pin("web", _pin("9")) == newer  # an unsigned pin written over it
    assert guard.pin("web", None) == newer  # deleted without a signed unpin
    assert guard.pin("web", sign_pin(key, _pin("3", kind="unpin"), 7)) is None
    assert guard.pin("web", newer) is None  # the pin replayed after its unpin
    refused = " ".join(d for d, _ in journal.entries)
    assert "ignored pin of n1 for web@1" in refused and "ignored pin of n2 for web@1" in refused
    assert "ignored pin of n1 for web@9" in refused
    expired = sign_pin(key, _pin("1", until=time.time() - 1), 8)
    assert guard.pin("web", expired) == expired and not expired.active(time.time())


# -- real agents (in memory) with their guard on --------------------------------------------------------
CATALOG = {"services": {"web": {"quorum": 1, "start": "run web"}}}


class SignedFleet:
    """Two agents with trusted keys; releases 1, 2, 3 staged and signed (sequence 1, 2, 3); both run 1."""

    def __init__(self, on_failure: str = "pause") -> None:
        self.key = Ed25519PrivateKey.generate()
        self.fleet = SimFleet(["n1", "n2"], {"services": {"web": {**CATALOG["services"]["web"],
                                                                   "on_failure": on_failure}}})
        self.releases: dict[str, Release] = {}
        for seq, version in enumerate(("1", "2", "3"), 1):
            release = self.fleet.stage("web", version, at=float(seq))
            self.releases[version] = release
            self.fleet.operator.put_release_blob("web", version, SIGNATURE_BLOB, sign(
                self.key, new_record("web", version, release.sha256, release.size, seq)))
        for node in self.fleet.agents:
            self.fleet.install(node, "web", "1")
            self.start(node)
        self.fleet.rounds(1)
        self.mark_seq = 0

    def start(self, node: str) -> None:
        agent = self.fleet.start(node)
        assert agent.payloads is not None and agent.store is not None
        agent.payloads.guard = ReleaseGuard(agent.store, agent.host, Verifier([self.key.public_key()]),
                                            HighWater(Path(agent.host.layout.state) / "signing"))

    def mark(self, version: str, how: str, signed: bool = True, by: str = "ops") -> None:
        record = Mark(service="web", version=version, mark=how, by=by, at=time.time(), why="story")
        if signed:
            self.mark_seq += 1
            record = sign_mark(self.key, record, self.mark_seq)
        self.fleet.operator.add_mark(record)

    def roll(self, version: str, **kw: object) -> str:
        [name] = self.fleet.deploy(("web", version), **kw)  # type: ignore[arg-type]
        self.run(lambda: self.state(name) in (DONE, HALTED))
        return name

    def state(self, name: str) -> str:
        entry = self.fleet.operator.deploy(name)
        assert entry is not None
        return entry.state

    def run(self, done: object, limit: int = 30) -> None:
        for _ in range(limit):
            if done():  # type: ignore[operator]
                return
            self.fleet.rounds(1)

    def versions(self) -> dict[str, str | None]:
        return self.fleet.versions("web")

    def journal(self, node: str) -> list[tuple[str, str, str | None]]:
        agent = self.fleet.agents[node].agent
        assert agent is not None
        return [(c.description, c.status, c.note) for c in agent.host.journal.list_changes()]


@pytest.fixture
def signed() -> Iterator[SignedFleet]:
    s = SignedFleet()
    yield s
    s.fleet.close()


def test_a_signed_bad_mark_sends_the_fleet_back_past_the_high_water_mark(signed: SignedFleet) -> None:
    assert signed.state(signed.roll("2")) == DONE
    signed.mark("2", "bad")
    signed.run(lambda: set(signed.versions().values()) == {"1"})
    assert set(signed.versions().values()) == {"1"}  # release 1 (sequence 1) is below the high-water mark 2
    assert not any("refused release" in j[0] for node in signed.fleet.agents for j in signed.journal(node))


@pytest.mark.parametrize("how", ["unsigned", "forged"])
def test_an_unsigned_or_forged_bad_mark_moves_no_node_and_is_journalled(signed: SignedFleet, how: str) -> None:
    assert signed.state(signed.roll("2")) == DONE
    if how == "unsigned":
        signed.mark("2", "bad", signed=False, by="mallory")
    else:
        stranger = Ed25519PrivateKey.generate()
        signed.fleet.operator.add_mark(sign_mark(stranger, _mark("2", "bad"), 99).evolve(
            key=sign_mark(signed.key, _mark("2"), 1).key))
    signed.fleet.rounds(4)
    assert set(signed.versions().values()) == {"2"}  # nobody went back
    if how == "forged":
        for node in signed.fleet.agents:
            refusals = [j for j in signed.journal(node) if "ignored mark bad of web@2" in j[0]]
            assert refusals and refusals[0][1] == "failed" and "does not match" in (refusals[0][2] or "")


def test_an_unsigned_good_mark_or_unmark_does_not_clear_a_signed_bad_mark(signed: SignedFleet) -> None:
    assert signed.state(signed.roll("2")) == DONE
    signed.mark("2", "bad")
    signed.run(lambda: set(signed.versions().values()) == {"1"})
    signed.mark("2", "none", signed=False, by="mallory")
    name = signed.roll("2")
    signed.fleet.rounds(2)
    assert set(signed.versions().values()) == {"1"} and signed.state(name) not in (DONE,)
    for node in signed.fleet.agents:
        assert any("ignored unsigned mark none of web@2" in j[0] for j in signed.journal(node))


def test_an_unsigned_bad_mark_halts_the_deploy_of_its_release_but_sends_no_one_back(signed: SignedFleet) -> None:
    assert signed.state(signed.roll("2")) == DONE
    signed.mark("3", "bad", signed=False, by="zkdeploy on n2")
    [name] = signed.fleet.deploy(("web", "3"))
    signed.fleet.rounds(4)
    assert set(signed.versions().values()) == {"2"}  # nobody moved to 3
    assert signed.state(name) not in (DONE,)
    current = signed.fleet.operator.current("web")
    assert all("marked bad by an unsigned record" in e.detail for e in current.values())
    signed.mark("3", "none")  # the operator's signed unmark lifts the halt
    signed.run(lambda: signed.state(name) == DONE)
    assert set(signed.versions().values()) == {"3"}


def test_a_signed_pin_holds_a_node_an_unsigned_one_does_not_and_a_signed_unpin_releases_it(
        signed: SignedFleet) -> None:
    ops = signed.fleet.operator
    ops.set_pin(Pin(node="n1", service="web", version="1", by="mallory", at=time.time(), why="x"))
    assert signed.state(signed.roll("2")) == DONE
    assert set(signed.versions().values()) == {"2"}  # the unsigned pin was ignored
    assert any("ignored pin of n1 for web@1" in j[0] for j in signed.journal("n1"))
    pin = sign_pin(signed.key, Pin(node="n1", service="web", version="1", by="ops", at=time.time(), why="demo"),
                   next_pin_seq(ops.pin("n1", "web")))
    ops.set_pin(pin)
    signed.run(lambda: signed.versions()["n1"] == "1")
    assert signed.versions() == {"n1": "1", "n2": "2"}  # a signed pin goes back past the high-water mark
    ops.remove_pin("n1", "web")  # an unsigned unpin
    signed.fleet.rounds(3)
    assert signed.versions()["n1"] == "1"
    ops.set_pin(sign_pin(signed.key, pin.evolve(kind="unpin", seq=0, key="", sig=""), next_pin_seq(pin)))
    assert ops.pins() == []  # the unpin record is not a pin
    signed.run(lambda: signed.versions()["n1"] == "2")
    assert signed.versions() == {"n1": "2", "n2": "2"}


def test_a_failed_gate_marks_its_release_bad_unsigned_which_halts_it_until_an_operator_signs() -> None:
    """on_failure: mark_bad under signing: the agent's own (unsigned) bad mark keeps every node from
    moving to the release, even in a new deploy of it, until an operator signs an unmark."""
    s = SignedFleet(on_failure="mark_bad")
    try:
        s.fleet.world.bad.add(("web", "2"))  # 2 fails its health check
        name = s.roll("2", on_failure="mark_bad")
        s.fleet.rounds(3)
        assert s.state(name) == HALTED
        marks = list(s.fleet.operator.marks("web").values())
        assert [(m.version, m.mark, m.signed) for m in marks] == [("2", "bad", False)]
        assert set(s.versions().values()) == {"1"}  # the node that tried went back by its own journal
        s.fleet.world.bad.discard(("web", "2"))  # fixed on the hosts; the operator tries again
        s.fleet.operator.update_deploy(s.fleet.operator.deploy(name).evolve(state="aborted"))
        [again] = s.fleet.deploy(("web", "2"))
        s.fleet.rounds(4)
        assert set(s.versions().values()) == {"1"} and s.state(again) not in (DONE,)  # halted by the mark
        s.mark("2", "none")  # the operator's signed unmark lifts it
        s.run(lambda: s.state(again) == DONE)
        assert set(s.versions().values()) == {"2"}
    finally:
        s.fleet.close()


# -- the operator's commands ------------------------------------------------------------------------------
def test_every_option_of_the_controls_and_security_commands_has_help_and_mark_and_pin_take_sign() -> None:
    import click

    from zkdeploy.cli import controls_cmd, security_cmd

    commands: list[click.Command] = []
    for module in (controls_cmd, security_cmd):
        for value in vars(module).values():
            if isinstance(value, click.Group):
                commands += list(value.commands.values())
            elif isinstance(value, click.Command):
                commands.append(value)
    assert {"mark", "unmark", "pin", "unpin", "apply", "id", "generate", "sign"} <= {c.name for c in commands}
    for command in commands:
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{command.name} {param.opts[0]} has no help text"
        if command.name in ("mark", "unmark", "pin", "unpin"):
            assert "--sign" in [o for p in command.params for o in p.opts], command.name


def test_a_deploy_waits_for_a_node_whose_pin_elsewhere_is_forged_and_not_for_one_signed(
        key: Ed25519PrivateKey) -> None:
    from zkdeploy.agent.deploys import _pinned_elsewhere
    from zkdeploy.coordination import Store
    from zkdeploy.model import DeployEntry
    from zkdeploy.testing.memory import MemoryEnsemble, MemorySession

    store = Store(MemorySession(MemoryEnsemble()).start(), "/dc")
    store.bootstrap()
    store.set_pin(sign_pin(key, _pin("1", node="n1"), seq=1))
    store.set_pin(_pin("1", node="n2"))  # unsigned: its own node ignores it
    store.set_pin(dataclasses.replace(sign_pin(key, _pin("1", node="n3"), seq=1), version="0"))  # tampered
    entry = DeployEntry(service="web", version="2")
    assert _pinned_elsewhere(store, entry, None) == {"n1", "n2", "n3"}  # no trusted keys: every pin counts
    assert _pinned_elsewhere(store, entry, Verifier([key.public_key()]).accepts) == {"n1"}
    store.close()
