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
highest one the agent has installed for that service.  Going back to an older
release therefore needs an operator to sign it again (``kind: rollback``)
with a new, higher sequence number; replaying an old envelope cannot.

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
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from zkdeploy.coordination.credentials import check_private
from zkdeploy.errors import ConfigError, SignatureError

PUBLIC_PREFIX = "zkdeploy-ed25519"
SIGNATURE_BLOB = "signature"
KINDS = ("release", "rollback")


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


def sign(key: Ed25519PrivateKey, record: ReleaseRecord) -> bytes:
    """The envelope (JSON bytes) for ``record`` signed with ``key``."""
    if record.kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    signature = key.sign(record.canonical())
    return json.dumps({"record": asdict(record), "key": key_id(key.public_key()),
                       "sig": base64.b64encode(signature).decode()}, sort_keys=True).encode()


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
    """Checks envelopes against a set of trusted public keys."""

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
        key = self.keys.get(kid)
        if key is None:
            raise SignatureError(f"{what}: signed by key {kid}, which this node does not trust")
        try:
            key.verify(signature, record.canonical())
        except InvalidSignature:
            raise SignatureError(f"{what}: the signature does not match the release record "
                                 f"(forged or tampered with)") from None
        expected = {"service": service, "version": version, "sha256": sha256, "size": size}
        wrong = [f"{k} {getattr(record, k)!r} != {v!r}" for k, v in expected.items() if getattr(record, k) != v]
        if wrong:
            raise SignatureError(f"{what}: the signed record is about another release: {', '.join(wrong)}")
        if record.seq < min_seq:
            raise SignatureError(f"{what}: signed with sequence {record.seq}, older than {min_seq}, the newest this "
                                 f"node has installed: a replayed record cannot send it back; an operator "
                                 f"must sign the rollback (zkdeploy keys sign {service}@{version} --rollback)")
        return record


class HighWater:
    """The highest sequence number this node has installed, per service (a small file per service)."""

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
