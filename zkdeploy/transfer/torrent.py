"""Torrent metainfo for one payload file: creation and validation.

A release payload is a single file (a tarball).  ``make_torrent`` turns it
into a private, v1-only torrent whose bencoded metainfo is small enough to
live in a ZooKeeper znode, and computes the file's SHA-256 in the same read
pass.  ``zkdeploy.transfer.metainfo.load_metainfo`` (no libtorrent) checks
metainfo read back from ZooKeeper before anything is handed to libtorrent.

Piece-size rule (see ``choose_piece_size``): 1 MiB pieces up to 1 GiB,
4 MiB above that, doubled further only when the piece-hash table would pass
``MAX_PIECE_TABLE_BYTES`` (256 KiB, i.e. 13,107 pieces: about 51 GiB at
4 MiB).  A v1 torrent costs 20 bytes per piece plus ~200 bytes of envelope,
so the metainfo stays far below ``metainfo.MAX_METAINFO_BYTES`` (512 KiB), itself
half of ZooKeeper's default 1 MiB znode limit.
"""

from __future__ import annotations

import hashlib
import os

import libtorrent as lt

from zkdeploy.errors import PayloadError
from zkdeploy.transfer.metainfo import GiB, MiB, TorrentMeta, load_metainfo

SMALL_PIECE = 1 * MiB
LARGE_PIECE = 4 * MiB
LARGE_THRESHOLD = 1 * GiB
MAX_PIECE_SIZE = 64 * MiB
MAX_PIECE_TABLE_BYTES = 256 << 10
_SHA1_LEN = 20
_READ_CHUNK = 1 * MiB


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


def torrent_info(meta: TorrentMeta) -> lt.torrent_info:
    """libtorrent's parsed form of ``meta`` (for the swarm module)."""
    return lt.torrent_info(meta.metainfo)
