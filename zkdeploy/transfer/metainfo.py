"""A payload's torrent metainfo, read and checked without libtorrent, and the payload's digest.

The agent reads the metainfo staged in ZooKeeper before it starts a swarm worker (and whether or
not it ever does), so this module must not load libtorrent (about 10 MB):
``zkdeploy.transfer.torrent`` makes torrents, the worker's libtorrent session parses them again.
``load_metainfo`` accepts only what ``make_torrent`` produces: a private, single-file torrent
with a v1 info-hash, a safe file name, a positive size, a piece table that matches it, and
metainfo under ``MAX_METAINFO_BYTES``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from zkdeploy import fsutil
from zkdeploy.errors import PayloadError

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

MAX_METAINFO_BYTES = 512 * KiB
SHA1_LEN = 20
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_INT = re.compile(rb"i(-?(?:0|[1-9][0-9]*))e")
_LEN = re.compile(rb"(0|[1-9][0-9]*):")
_MAX_DEPTH = 32


@dataclass(frozen=True)
class TorrentMeta:
    """Everything the swarm and the release metadata need about one payload.

    ``metainfo`` is the bencoded .torrent (what goes into ZooKeeper);
    ``info_hash`` is its v1 info-hash in lower-case hex (the swarm's key);
    ``sha256`` is the whole file's SHA-256 in hex, or ``None`` when the meta
    was loaded from metainfo alone (the torrent does not carry it).
    """

    metainfo: bytes
    info_hash: str
    name: str
    size: int
    piece_size: int
    num_pieces: int
    sha256: str | None = None

    def with_sha256(self, sha256: str) -> TorrentMeta:
        """Return a copy that carries the expected SHA-256 from release metadata."""
        return replace(self, sha256=normalize_sha256(sha256))


def normalize_sha256(value: str) -> str:
    """Return ``value`` as 64 lower-case hex digits or raise PayloadError."""
    v = (value or "").strip().lower()
    if not _SHA256_HEX.match(v):
        raise PayloadError(f"not a SHA-256 hex digest: {value!r}")
    return v


def payload_digest(path: str | Path) -> fsutil.FileDigest:
    """SHA-256 and size of a payload file; PayloadError (exit 5) when it cannot be read."""
    try:
        return fsutil.sha256_file(path)
    except OSError as exc:
        raise PayloadError(f"cannot read payload {path}: {exc.strerror or exc}") from None


def load_metainfo(data: bytes, sha256: str | None = None) -> TorrentMeta:
    """Validate bencoded metainfo and describe it; PayloadError saying what is wrong otherwise
    (including corrupt or truncated bytes)."""
    if not isinstance(data, (bytes, bytearray)):
        raise PayloadError(f"torrent metainfo must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise PayloadError("torrent metainfo is empty")
    if len(data) > MAX_METAINFO_BYTES:
        raise PayloadError(f"torrent metainfo is {len(data)} bytes, more than the {MAX_METAINFO_BYTES} allowed")
    spans: dict[bytes, tuple[int, int]] = {}
    try:
        top, end = _decode(data, 0, 0, spans)
    except (IndexError, ValueError) as exc:
        raise PayloadError(f"torrent metainfo is corrupt: {exc}") from None
    if end != len(data):
        raise PayloadError(f"torrent metainfo is corrupt: {len(data) - end} bytes after its end")
    info = top.get(b"info") if isinstance(top, dict) else None
    if not isinstance(info, dict) or b"info" not in spans:
        raise PayloadError("torrent metainfo is corrupt: not a bencoded dictionary with an 'info' dictionary")
    if info.get(b"private") != 1:
        raise PayloadError("torrent is not private; zkdeploy only uses private torrents")
    if b"files" in info:
        files = info[b"files"]
        count = len(files) if isinstance(files, list) else "several"
        raise PayloadError(f"torrent has {count} files; a payload is exactly one")
    name = _text(info.get(b"name"))
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise PayloadError(f"torrent file name is unsafe or nested: {name!r}")
    size, piece = info.get(b"length"), info.get(b"piece length")
    if not isinstance(size, int) or size <= 0:
        raise PayloadError("torrent describes an empty payload")
    pieces = info.get(b"pieces")
    if not isinstance(pieces, bytes) or not pieces:
        raise PayloadError("torrent has no v1 info-hash (no v1 piece table)")
    if not isinstance(piece, int) or piece <= 0 or len(pieces) != -(-size // piece) * SHA1_LEN:
        raise PayloadError("torrent metainfo is corrupt: its piece table does not match its size")
    start, stop = spans[b"info"]
    return TorrentMeta(
        metainfo=data, info_hash=hashlib.sha1(data[start:stop]).hexdigest(), name=name, size=size,
        piece_size=piece, num_pieces=len(pieces) // SHA1_LEN,
        sha256=normalize_sha256(sha256) if sha256 is not None else None)


def _text(value: Any) -> str:
    if not isinstance(value, bytes):
        return ""
    try:
        return value.decode()
    except UnicodeDecodeError:
        return "\x00"  # refused as unsafe


def _decode(data: bytes, at: int, depth: int, spans: dict[bytes, tuple[int, int]]) -> tuple[Any, int]:
    """The bencoded value at ``at`` and where it ends.  ``spans`` receives the byte range of each
    value of the top-level dictionary (the info-hash is the SHA-1 of the info dictionary's bytes).
    ValueError or IndexError when the bytes are not bencode."""
    if depth > _MAX_DEPTH:
        raise ValueError("nested too deeply")
    lead = data[at:at + 1]
    if lead == b"i":
        m = _INT.match(data, at)
        if m is None or m.group(1) == b"-0":
            raise ValueError(f"bad integer at byte {at}")
        return int(m.group(1)), m.end()
    if lead in (b"l", b"d"):
        at += 1
        items: list[Any] = []
        while data[at:at + 1] != b"e":
            if at >= len(data):
                raise ValueError("truncated")
            start = at
            value, at = _decode(data, at, depth + 1, spans)
            if lead == b"d" and len(items) % 2 == 1 and depth == 0:
                spans[items[-1]] = (start, at)
            items.append(value)
        if lead == b"l":
            return items, at + 1
        if len(items) % 2 or not all(isinstance(k, bytes) for k in items[::2]):
            raise ValueError("a dictionary key is not a string")
        return dict(zip(items[::2], items[1::2], strict=True)), at + 1
    m = _LEN.match(data, at)
    if m is None:
        raise ValueError(f"unexpected byte {lead!r} at {at}")
    end = m.end() + int(m.group(1))
    if end > len(data):
        raise ValueError("truncated")
    return data[m.end():end], end
