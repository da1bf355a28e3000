"""Signed release records (Ed25519): what an operator signs, and what an agent accepts.

An operator signs a *release record*: the service, the version, the payload's
SHA-256 and size, a sequence number and the time it was signed.  The record
and its signature travel as one JSON envelope stored beside the release in
ZooKeeper (``staging/<service>/<version>/signature``)::

    {"record": {"kind": "release", "service": "web", "version": "2.0", "sha256": "...",
                "size": 123, "seq": 7, "staged_at": 1700000000.0},
     "key": "<key id>", "sig": "<base64 Ed25519 signature of the canonical record>"}

An agent configured with trusted public keys (several, for rotation) accepts
a release only when the envelope is signed by one of them, the signature
matches the canonical record, the record matches the release it is about
(service, version, SHA-256, size), and its sequence number is not below the
highest one the agent has run for that service.  Going back to an older
release therefore needs an operator to sign it again (``kind: rollback``)
with a new, higher sequence number; replaying an old envelope cannot.

Release marks and pins (zkdeploy.policy.marks) are signed by the same keys as
*control records* (``kind`` ``mark``, ``pin`` or ``unpin``): the record
carries the service, the version, the mark (or the node and expiry of a pin),
who made it and when, why, and a sequence number; the key id and the
signature travel in the Mark or Pin record itself (its ``key`` and ``sig``
fields).  Whether an agent acts on one (and the replay rules) is
zkdeploy.agent.signatures.ControlGuard.

Key files: the private key is PEM (PKCS#8) readable only by its owner; the
public key is one line, ``zkdeploy-ed25519 <base64 raw key>``.  A key's id is
the first 16 hex digits of the SHA-256 of its raw public key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from zkdeploy.coordination.credentials import check_private
from zkdeploy.errors import ConfigError, SignatureError
from zkdeploy.model import Mark, Pin

PUBLIC_PREFIX = "zkdeploy-ed25519"
SIGNATURE_BLOB = "signature"
RELEASE_KINDS = ("release", "rollback")
CONTROL_KINDS = ("mark", "pin", "unpin")
KINDS = RELEASE_KINDS + CONTROL_KINDS


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_line(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"{PUBLIC_PREFIX} {base64.b64encode(raw).decode()} {key_id(public)}"


def generate(path: str | Path) -> tuple[Path, Path, str]:
    """Write a new private key to ``path`` (mode 600, refusing to overwrite) and its public key to
    ``path.pub``; returns both paths and the key id."""
    private_path = Path(path)
    public_path = Path(str(path) + ".pub")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{private_path} exists: a signing key is never overwritten") from None
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    public_path.write_text(public_line(key.public_key()) + "\n")
    return private_path, public_path, key_id(key.public_key())


def load_private(path: str | Path) -> Ed25519PrivateKey:
    """The signing key in ``path``; ConfigError when the file is unprotected or not an Ed25519 key."""
    p = Path(path)
    check_private(p, "signing key")
    try:
        key = serialization.load_pem_private_key(p.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"signing key {p}: cannot load it: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"signing key {p}: not an Ed25519 key")
    return key


def load_public(path: str | Path) -> Ed25519PublicKey:
    """A trusted public key: a ``zkdeploy-ed25519`` line, or PEM."""
    p = Path(path)
    try:
        text = p.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"trusted key {p}: {exc.strerror}") from None
    try:
        if text.startswith(PUBLIC_PREFIX):
            return Ed25519PublicKey.from_public_bytes(base64.b64decode(text.split()[1], validate=True))
        key = serialization.load_pem_public_key(text.encode())
    except (ValueError, IndexError, TypeError) as exc:
        raise ConfigError(f"trusted key {p}: not an Ed25519 public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"trusted key {p}: not an Ed25519 public key")
    return key


@dataclass(frozen=True)
class ReleaseRecord:
    """What is signed."""

    kind: str
    service: str
    version: str
    sha256: str
    size: int
    seq: int
    staged_at: float

    def canonical(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class ControlRecord:
    """What is signed for a release mark (``kind: mark``), a pin (``pin``) or the removal of a pin
    (``unpin``).  A mark has no node and no expiry; a pin has no mark."""

    kind: str
    service: str
    version: str
    mark: str
    node: str
    until: float | None
    by: str
    at: float
    why: str
    seq: int

    def canonical(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()


class _Signable(Protocol):
    @property
    def kind(self) -> str: ...

    def canonical(self) -> bytes: ...


def _signature(key: Ed25519PrivateKey, record: _Signable) -> tuple[str, str]:
    """(key id, base64 signature) of ``record``'s canonical form: the one signer of every kind."""
    if record.kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    return key_id(key.public_key()), base64.b64encode(key.sign(record.canonical())).decode()


def sign(key: Ed25519PrivateKey, record: ReleaseRecord) -> bytes:
    """The envelope (JSON bytes) for ``record`` signed with ``key``."""
    if record.kind not in RELEASE_KINDS:
        raise ValueError(f"a release record's kind must be one of {RELEASE_KINDS}")
    kid, sig = _signature(key, record)
    return json.dumps({"record": asdict(record), "key": kid, "sig": sig}, sort_keys=True).encode()


def control_record(item: Mark | Pin) -> ControlRecord:
    """The record a mark or a pin is signed as (its ``seq`` included, its ``key`` and ``sig`` not)."""
    if isinstance(item, Mark):
        return ControlRecord(kind="mark", service=item.service, version=item.version, mark=item.mark, node="",
                             until=None, by=item.by, at=item.at, why=item.why, seq=item.seq)
    return ControlRecord(kind=item.kind, service=item.service, version=item.version, mark="", node=item.node,
                         until=item.until, by=item.by, at=item.at, why=item.why, seq=item.seq)


def sign_mark(key: Ed25519PrivateKey, mark: Mark, seq: int) -> Mark:
    """``mark`` with sequence number ``seq``, signed by ``key``."""
    mark = mark.evolve(seq=seq)
    kid, sig = _signature(key, control_record(mark))
    return mark.evolve(key=kid, sig=sig)


def sign_pin(key: Ed25519PrivateKey, pin: Pin, seq: int) -> Pin:
    """``pin`` (or an unpin record, ``kind: unpin``) with sequence number ``seq``, signed by ``key``."""
    pin = pin.evolve(seq=seq)
    kid, sig = _signature(key, control_record(pin))
    return pin.evolve(key=kid, sig=sig)


def next_pin_seq(previous: Pin | None, now: float | None = None) -> int:
    """The sequence number of a new signed pin or unpin record of a node's service: above the record
    it replaces and never below the time in seconds, so that it stays above what an agent accepted
    even when an unsigned ``unpin`` deleted the record (and its number) in between."""
    return max((previous.seq if previous else 0) + 1, int(time.time() if now is None else now))


def new_record(service: str, version: str, sha256: str, size: int, seq: int, kind: str = "release",
               now: float | None = None) -> ReleaseRecord:
    return ReleaseRecord(kind=kind, service=service, version=version, sha256=sha256, size=size, seq=seq,
                         staged_at=time.time() if now is None else now)


def parse(envelope: bytes | None) -> tuple[ReleaseRecord, str, bytes]:
    """(record, key id, signature) of an envelope, unverified; SignatureError when malformed."""
    if not envelope:
        raise SignatureError("the release is not signed")
    try:
        data: Any = json.loads(envelope.decode())
        record = ReleaseRecord(**data["record"])
        return record, str(data["key"]), base64.b64decode(data["sig"], validate=True)
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise SignatureError(f"the release's signature record is malformed: {exc}") from None


def seq_of(envelope: bytes | None) -> int | None:
    """The sequence number an envelope claims (unverified), None when there is none."""
    try:
        return parse(envelope)[0].seq
    except SignatureError:
        return None


class Verifier:
    """Checks release envelopes and signed marks and pins against a set of trusted public keys."""

    def __init__(self, keys: list[Ed25519PublicKey]) -> None:
        if not keys:
            raise ConfigError("signing: at least one trusted key is needed")
        self.keys = {key_id(k): k for k in keys}

    @classmethod
    def from_files(cls, paths: list[str]) -> Verifier:
        return cls([load_public(p) for p in paths])

    def verify(self, envelope: bytes | None, *, service: str, version: str, sha256: str, size: int,
               min_seq: int = 0) -> ReleaseRecord:
        """The verified record; SignatureError saying why it is refused.

        Refused: no envelope; a key that is not trusted; a signature that does
        not match the record (forged or tampered); a record about another
        release (service, version, SHA-256 or size differ); a sequence number
        below ``min_seq`` (a replayed older record: going back needs a new
        signature).
        """
        record, kid, signature = parse(envelope)
        what = f"{service}@{version}"
        self._check(what, kid, signature, record.canonical(), "the release record")
        expected = {"service": service, "version": version, "sha256": sha256, "size": size}
        wrong = [f"{k} {getattr(record, k)!r} != {v!r}" for k, v in expected.items() if getattr(record, k) != v]
        if wrong:
            raise SignatureError(f"{what}: the signed record is about another release: {', '.join(wrong)}")
        if record.seq < min_seq:
            raise SignatureError(f"{what}: signed with sequence {record.seq}, older than {min_seq}, the newest this "
                                 f"node has run: a replayed record cannot send it back; an operator "
                                 f"must sign the rollback (zkdeploy keys sign {service}@{version} --rollback)")
        return record

    def accepts(self, item: Mark | Pin) -> bool:
        """Whether ``item`` is signed by a trusted key and matches its signature (verify_control)."""
        try:
            self.verify_control(item)
        except SignatureError:
            return False
        return True

    def verify_control(self, item: Mark | Pin) -> ControlRecord:
        """The verified record of a mark or a pin; SignatureError saying why it is refused: not
        signed, signed by a key that is not trusted, or a signature that does not match the record
        (forged, or changed after signing).  Which of several valid records counts (sequence
        numbers, replays) is the caller's business."""
        record = control_record(item)
        what = (f"mark {record.mark} of {record.service}@{record.version}" if record.kind == "mark"
                else f"{record.kind} of {record.node} for {record.service}"
                     + (f"@{record.version}" if record.kind == "pin" else ""))
        if not item.sig:
            raise SignatureError(f"{what}: not signed")
        try:
            signature = base64.b64decode(item.sig, validate=True)
        except ValueError:
            raise SignatureError(f"{what}: the signature is malformed") from None
        self._check(what, item.key, signature, record.canonical(), "the record")
        return record

    def _check(self, what: str, kid: str, signature: bytes, canonical: bytes, record: str) -> None:
        key = self.keys.get(kid)
        if key is None:
            raise SignatureError(f"{what}: signed by key {kid or '(none)'}, which this node does not trust")
        try:
            key.verify(signature, canonical)
        except InvalidSignature:
            raise SignatureError(f"{what}: the signature does not match {record} "
                                 f"(forged or tampered with)") from None


class HighWater:
    """The highest sequence number of a release this node has run, per service (a small file per service)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def get(self, service: str) -> int:
        try:
            return int((self.dir / f"{service}.seq").read_text().strip())
        except (OSError, ValueError):
            return 0

    def raise_to(self, service: str, seq: int) -> None:
        """Record ``seq`` if it is higher (durably: temp file, fsync, rename)."""
        if seq <= self.get(service):
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{service}.seq.tmp"
        with open(tmp, "w") as out:
            out.write(f"{seq}\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.dir / f"{service}.seq")
