"""Torrent metainfo for one payload file: creation and validation.

A release payload is a single file (a tarball).  ``make_torrent`` turns it
into a private, v1-only torrent whose bencoded metainfo is small enough to
live in a ZooKeeper znode, and computes the file's SHA-256 in the same read
pass.  ``load_metainfo`` checks metainfo read back from ZooKeeper before
anything is handed to libtorrent.

Piece-size rule (see ``choose_piece_size``): 1 MiB pieces up to 1 GiB,
4 MiB above that, doubled further only when the piece-hash table would pass
``MAX_PIECE_TABLE_BYTES`` (256 KiB, i.e. 13,107 pieces: about 51 GiB at
4 MiB).  A v1 torrent costs 20 bytes per piece plus ~200 bytes of envelope,
so the metainfo stays far below ``MAX_METAINFO_BYTES`` (512 KiB), itself
half of ZooKeeper's default 1 MiB znode limit.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, replace

import libtorrent as lt

from zkdeploy.errors import PayloadError

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

SMALL_PIECE = 1 * MiB
LARGE_PIECE = 4 * MiB
LARGE_THRESHOLD = 1 * GiB
MAX_PIECE_SIZE = 64 * MiB
MAX_PIECE_TABLE_BYTES = 256 * KiB
MAX_METAINFO_BYTES = 512 * KiB

_SHA1_LEN = 20
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_READ_CHUNK = 1 * MiB


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


def choose_piece_size(size: int) -> int:
    """Piece size for a payload of ``size`` bytes (the documented rule above)."""
    if size <= 0:
        raise PayloadError(f"payload size must be positive, got {size}")
    piece = SMALL_PIECE if size <= LARGE_THRESHOLD else LARGE_PIECE
    while piece < MAX_PIECE_SIZE and _num_pieces(size, piece) * _SHA1_LEN > MAX_PIECE_TABLE_BYTES:
        piece *= 2
    return piece


def _num_pieces(size: int, piece: int) -> int:
    return (size + piece - 1) // piece


def make_torrent(path: str | os.PathLike[str]) -> TorrentMeta:
    """Build a private v1 torrent for the single file at ``path``.

    Reads the file once: each piece is SHA-1 hashed for the torrent while the
    whole file is SHA-256 hashed for the release metadata.  The file must not
    change while this runs (the sizes are checked before and after).
    Raises PayloadError for a missing path, a directory or an empty file.
    """
    p = os.path.abspath(os.fspath(path))
    size = _payload_size(p)
    piece = choose_piece_size(size)
    ct = lt.create_torrent(lt.list_files(p), piece, lt.create_torrent.v1_only)
    ct.set_priv(True)
    ct.set_creator("zkdeploy")
    if ct.num_pieces() != _num_pieces(size, piece):
        raise PayloadError(f"{p}: libtorrent laid out {ct.num_pieces()} pieces, expected "
                           f"{_num_pieces(size, piece)}")
    whole = hashlib.sha256()
    read = 0
    try:
        with open(p, "rb") as f:
            for index in range(ct.num_pieces()):
                h = hashlib.sha1()
                want = min(piece, size - read)
                while want:
                    chunk = f.read(min(want, _READ_CHUNK))
                    if not chunk:
                        raise PayloadError(f"{p}: file shrank while hashing (at byte {read})")
                    h.update(chunk)
                    whole.update(chunk)
                    want -= len(chunk)
                    read += len(chunk)
                ct.set_hash(index, h.digest())
            if f.read(1):
                raise PayloadError(f"{p}: file grew while hashing")
    except OSError as e:
        raise PayloadError(f"cannot read payload {p}: {e}") from e
    metainfo = lt.bencode(ct.generate())
    meta = load_metainfo(metainfo)
    return meta.with_sha256(whole.hexdigest())


def _payload_size(p: str) -> int:
    if not os.path.exists(p):
        raise PayloadError(f"payload does not exist: {p}")
    if os.path.isdir(p):
        raise PayloadError(f"payload is a directory, expected one file (a tarball): {p}")
    if not os.path.isfile(p):
        raise PayloadError(f"payload is not a regular file: {p}")
    size = os.path.getsize(p)
    if size == 0:
        raise PayloadError(f"payload is empty: {p}")
    return size


def load_metainfo(data: bytes, sha256: str | None = None) -> TorrentMeta:
    """Validate bencoded metainfo and describe it.

    Accepts only what ``make_torrent`` produces: a private, single-file
    torrent with a v1 info-hash, a safe file name, a positive size and
    metainfo under ``MAX_METAINFO_BYTES``.  Anything else (including corrupt
    or truncated bytes) raises PayloadError saying what is wrong.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise PayloadError(f"torrent metainfo must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise PayloadError("torrent metainfo is empty")
    if len(data) > MAX_METAINFO_BYTES:
        raise PayloadError(f"torrent metainfo is {len(data)} bytes, more than the "
                           f"{MAX_METAINFO_BYTES} allowed")
    try:
        decoded = lt.bdecode(data)
    except RuntimeError as e:
        raise PayloadError(f"torrent metainfo is corrupt: {e}") from e
    if not isinstance(decoded, dict) or b"info" not in decoded:
        raise PayloadError("torrent metainfo is corrupt: not a bencoded dictionary with an "
                           "'info' key")
    try:
        ti = lt.torrent_info(data)
    except RuntimeError as e:
        raise PayloadError(f"torrent metainfo is corrupt: {e}") from e
    if not ti.is_valid():
        raise PayloadError("torrent metainfo is corrupt: libtorrent rejected it")
    if not ti.priv():
        raise PayloadError("torrent is not private; zkdeploy only uses private torrents")
    layout = ti.layout()
    if layout.num_files() != 1:
        raise PayloadError(f"torrent has {layout.num_files()} files; a payload is exactly one")
    name = ti.name()
    if (not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name
            or layout.file_path(0) != name):
        raise PayloadError(f"torrent file name is unsafe or nested: {name!r}")
    size = ti.total_size()
    if size <= 0:
        raise PayloadError("torrent describes an empty payload")
    v1 = ti.info_hashes().v1
    if v1.is_all_zeros():
        raise PayloadError("torrent has no v1 info-hash")
    return TorrentMeta(
        metainfo=data,
        info_hash=str(v1),
        name=name,
        size=size,
        piece_size=ti.piece_length(),
        num_pieces=ti.num_pieces(),
        sha256=normalize_sha256(sha256) if sha256 is not None else None,
    )


def torrent_info(meta: TorrentMeta) -> lt.torrent_info:
    """libtorrent's parsed form of ``meta`` (for the swarm module)."""
    return lt.torrent_info(meta.metainfo)
