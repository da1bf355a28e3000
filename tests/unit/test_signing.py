"""Signed releases (issue 13): what is accepted, what is refused, and what a refusal leaves behind.

The record checks are pure; the fleet tests run real agents' decision code on
the in-memory store (zkdeploy.testing.simfleet) with their release guard on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from zkdeploy.agent.signatures import ReleaseGuard
from zkdeploy.errors import ConfigError, SignatureError
from zkdeploy.model import ABORTED, DONE, HALTED, Release
from zkdeploy.signing import (
    SIGNATURE_BLOB,
    HighWater,
    Verifier,
    generate,
    load_private,
    load_public,
    new_record,
    sign,
)
from zkdeploy.testing.simfleet import SimFleet

SHA = "a" * 64


def _env(key: Ed25519PrivateKey, version: str = "2", seq: int = 1, sha: str = SHA, kind: str = "release") -> bytes:
    return sign(key, new_record("web", version, sha, 10, seq, kind=kind, now=1.0))


def _verify(verifier: Verifier, envelope: bytes | None, version: str = "2", min_seq: int = 0) -> object:
    return verifier.verify(envelope, service="web", version=version, sha256=SHA, size=10, min_seq=min_seq)


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_a_record_signed_by_a_trusted_key_is_accepted_with_several_keys_trusted(key: Ed25519PrivateKey) -> None:
    old = Ed25519PrivateKey.generate()
    verifier = Verifier([old.public_key(), key.public_key()])  # rotation: both trusted
    assert _verify(verifier, _env(key, seq=4)).seq == 4  # type: ignore[attr-defined]
    assert _verify(verifier, _env(old, seq=5)).seq == 5  # type: ignore[attr-defined]


@pytest.mark.parametrize("case, message", [
    ("unsigned", "not signed"),
    ("unknown key", "does not trust"),
    ("forged", "does not match the release record"),
    ("tampered", "does not match the release record"),
    ("other release", "about another release: sha256"),
    ("other version", "about another release: version"),
    ("replayed", "older than 3"),
    ("garbage", "malformed"),
])
def test_refusals_say_why(key: Ed25519PrivateKey, case: str, message: str) -> None:
    verifier = Verifier([key.public_key()])
    stranger = Ed25519PrivateKey.generate()
    envelope: bytes | None = _env(key, seq=2)
    min_seq = 0
    if case == "unsigned":
        envelope = None
    elif case == "unknown key":
        envelope = _env(stranger)
    elif case == "forged":  # signed by a stranger, claiming the trusted key's id
        forged = json.loads(_env(stranger))
        forged["key"] = json.loads(_env(key))["key"]
        envelope = json.dumps(forged).encode()
    elif case == "tampered":  # a trusted signature, the record changed after signing
        data = json.loads(_env(key))
        data["record"]["seq"] = 99
        envelope = json.dumps(data).encode()
    elif case == "other release":
        envelope = _env(key, sha="b" * 64)
    elif case == "other version":
        envelope = _env(key, version="1")
    elif case == "replayed":
        min_seq = 3
    elif case == "garbage":
        envelope = b"{not json"
    with pytest.raises(SignatureError, match=message):
        _verify(verifier, envelope, min_seq=min_seq)


def test_keys_are_generated_private_never_overwritten_and_an_open_key_is_refused(tmp_path: Path) -> None:
    private, public, kid = generate(tmp_path / "release.key")
    assert oct(private.stat().st_mode & 0o777) == "0o600"
    assert public.read_text().startswith("zkdeploy-ed25519 ") and kid in public.read_text()
    key = load_private(private)
    assert Verifier([load_public(public)]).verify(_env(key), service="web", version="2", sha256=SHA, size=10)
    with pytest.raises(ConfigError, match="never overwritten"):
        generate(private)
    os.chmod(private, 0o644)
    with pytest.raises(ConfigError, match="accessible to other users"):
        load_private(private)


def test_the_high_water_mark_only_rises(tmp_path: Path) -> None:
    hw = HighWater(tmp_path / "signing")
    assert hw.get("web") == 0
    hw.raise_to("web", 5)
    hw.raise_to("web", 3)
    assert hw.get("web") == 5 and hw.get("db") == 0


# -- real agents (in memory) with their guard on ----------------------------------------------------
CATALOG = {"services": {"web": {"quorum": 1, "start": "run web"}}}


class SignedFleet:
    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.fleet = SimFleet(["n1", "n2"], CATALOG)
        self.seq = 0
        self.releases: dict[str, Release] = {}
        self.stage("1", at=1.0)
        for node in self.fleet.agents:
            self.fleet.install(node, "web", "1")
        self.fleet.start_all()
        for sim in self.fleet.agents.values():
            agent = sim.agent
            assert agent is not None and agent.payloads is not None and agent.store is not None
            agent.payloads.guard = ReleaseGuard(agent.store, agent.host, Verifier([self.key.public_key()]),
                                                HighWater(Path(agent.host.layout.state) / "signing"))
        self.fleet.rounds(1)

    def stage(self, version: str, at: float | None = None, envelope: bytes | str | None = "sign") -> Release:
        release = self.fleet.stage("web", version, at=at)
        self.releases[version] = release
        if envelope == "sign":
            self.sign(version)
        elif isinstance(envelope, bytes):
            self.fleet.operator.put_release_blob("web", version, SIGNATURE_BLOB, envelope)
        return release

    def sign(self, version: str, kind: str = "release") -> bytes:
        self.seq += 1
        r = self.releases[version]
        envelope = sign(self.key, new_record("web", version, r.sha256, r.size, self.seq, kind=kind))
        self.fleet.operator.put_release_blob("web", version, SIGNATURE_BLOB, envelope)
        return envelope

    def run(self, name: str, until: tuple[str, ...] = (DONE, HALTED), limit: int = 30) -> str:
        for _ in range(limit):
            self.fleet.rounds(1)
            entry = self.fleet.operator.deploy(name)
            assert entry is not None
            if entry.state in until:
                return entry.state
        entry = self.fleet.operator.deploy(name)
        assert entry is not None
        return entry.state

    def journal(self, node: str) -> list[tuple[str, str, str | None]]:
        agent = self.fleet.agents[node].agent
        assert agent is not None
        return [(c.description, c.status, c.note) for c in agent.host.journal.list_changes()]

    def data(self, node: str) -> Path:
        return Path(self.fleet.agents[node].config.data_dir)


@pytest.fixture
def signed() -> Iterator[SignedFleet]:
    s = SignedFleet()
    yield s
    s.fleet.close()


def test_a_signed_release_rolls_out(signed: SignedFleet) -> None:
    signed.stage("2")
    [name] = signed.fleet.deploy(("web", "2"))
    assert signed.run(name) == DONE
    assert set(signed.fleet.versions("web").values()) == {"2"}


@pytest.mark.parametrize("how", ["unsigned", "forged", "tampered"])
def test_an_unsigned_or_forged_release_is_never_fetched_or_unpacked_and_the_deploy_halts(
        signed: SignedFleet, how: str) -> None:
    if how == "unsigned":
        signed.stage("2", envelope=None)
    elif how == "forged":
        release = signed.stage("2", envelope=None)
        stranger = Ed25519PrivateKey.generate()
        forged = json.loads(sign(stranger, new_record("web", "2", release.sha256, release.size, 50)))
        forged["key"] = json.loads(sign(signed.key, new_record("web", "x", SHA, 1, 1)))["key"]
        signed.fleet.operator.put_release_blob("web", "2", SIGNATURE_BLOB, json.dumps(forged).encode())
    else:  # a trusted signature of another payload: whoever staged "2" swapped the bytes
        signed.stage("2", envelope=sign(signed.key, new_record("web", "2", "c" * 64, 10, 9)))
    [name] = signed.fleet.deploy(("web", "2"))
    assert signed.run(name) == HALTED
    entry = signed.fleet.operator.deploy(name)
    assert entry is not None and "refused release" in entry.message
    assert set(signed.fleet.versions("web").values()) == {"1"}
    for node in signed.fleet.agents:
        assert not (signed.data(node) / "releases" / "web" / "2").exists()  # never unpacked
        assert not (signed.data(node) / "payloads" / "web" / "2").exists()  # never fetched (or deleted)
        refusals = [j for j in signed.journal(node) if "refused release 2" in j[0]]
        assert refusals and refusals[0][1] == "failed" and "SignatureError" in (refusals[0][2] or "")


def test_a_replayed_older_release_cannot_send_the_fleet_back_but_a_signed_rollback_can(signed: SignedFleet) -> None:
    signed.stage("2")
    [name] = signed.fleet.deploy(("web", "2"))
    assert signed.run(name) == DONE
    # "1" is still on disk and its old signature (seq 1) is still valid: replaying it is refused
    [back] = signed.fleet.deploy(("web", "1"), previous={"web": "2"}, kind="rollback")
    assert signed.run(back) == HALTED
    entry = signed.fleet.operator.deploy(back)
    assert entry is not None and "older than" in entry.message
    assert set(signed.fleet.versions("web").values()) == {"2"}
    # an operator signs the rollback (a new, higher sequence number): now the fleet goes back
    signed.fleet.operator.update_deploy(entry.evolve(state=ABORTED))
    signed.sign("1", kind="rollback")
    [again] = signed.fleet.deploy(("web", "1"), previous={"web": "2"}, kind="rollback")
    assert signed.run(again) == DONE
    assert set(signed.fleet.versions("web").values()) == {"1"}


def test_a_newer_release_staged_ahead_does_not_block_the_deploy_of_an_older_one(signed: SignedFleet) -> None:
    """Agents unpack the newest staged release ahead of its deploy; that must not count as running it
    (it once raised the high-water mark, and the deploy of 2 was refused as a replay)."""
    signed.stage("2", at=2.0)
    signed.stage("3", at=3.0)
    signed.fleet.rounds(2)  # 3, the newest, is fetched and unpacked ahead
    assert all((signed.data(node) / "releases" / "web" / "3").exists() for node in signed.fleet.agents)
    [name] = signed.fleet.deploy(("web", "2"))
    assert signed.run(name) == DONE
    assert set(signed.fleet.versions("web").values()) == {"2"}
    # once 2 runs, its number is the floor: a replay of 1 is refused
    [back] = signed.fleet.deploy(("web", "1"), previous={"web": "2"}, kind="rollback")
    assert signed.run(back) == HALTED


def test_a_release_refused_before_its_deploy_was_queued_still_halts_the_deploy(signed: SignedFleet) -> None:
    """Agents look at the newest staged release ahead of its deploy and refuse it then; the deploy
    queued afterwards must still hear of the refusal (it once waited for ever, found by the e2e)."""
    signed.stage("2", envelope=None)
    signed.fleet.rounds(3)  # refused ahead: journalled once per node, no deploy to tell yet
    [name] = signed.fleet.deploy(("web", "2"))
    assert signed.run(name) == HALTED
    entry = signed.fleet.operator.deploy(name)
    assert entry is not None and "refused release" in entry.message and "not signed" in entry.message
    for node in signed.fleet.agents:
        assert len([j for j in signed.journal(node) if "refused release 2" in j[0]]) == 1  # still once
