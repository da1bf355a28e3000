"""Piece-size choice and metainfo validation (no network)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import libtorrent as lt
import pytest

from zkdeploy.errors import PayloadError
from zkdeploy.transfer.metainfo import MAX_METAINFO_BYTES, GiB, KiB, MiB, load_metainfo
from zkdeploy.transfer.torrent import choose_piece_size, make_torrent


@pytest.mark.parametrize("size, piece", [
    (1, 1 * MiB),
    (64 * MiB, 1 * MiB),
    (1 * GiB, 1 * MiB),
    (1 * GiB + 1, 4 * MiB),
    (40 * GiB, 4 * MiB),
    (100 * GiB, 8 * MiB),
    (1000 * GiB, 64 * MiB),
])
def test_piece_size_rule(size: int, piece: int) -> None:
    assert choose_piece_size(size) == piece


@pytest.mark.parametrize("size", [1, 900 * MiB, 1 * GiB, 3 * GiB, 51 * GiB, 400 * GiB])
def test_piece_table_fits_a_znode(size: int) -> None:
    pieces = -(-size // choose_piece_size(size))
    assert pieces * 20 + 1 * KiB < MAX_METAINFO_BYTES


def test_piece_size_rejects_nonpositive() -> None:
    with pytest.raises(PayloadError):
        choose_piece_size(0)


@pytest.fixture()
def payload(tmp_path: Path) -> Path:
    p = tmp_path / "app-1.2.tar"
    p.write_bytes(os.urandom(3 * MiB + 123))
    return p


def test_make_torrent_describes_the_file(payload: Path) -> None:
    meta = make_torrent(payload)
    data = payload.read_bytes()
    assert meta.sha256 == hashlib.sha256(data).hexdigest()
    assert meta.size == len(data) and meta.piece_size == 1 * MiB and meta.num_pieces == 4
    assert meta.name == "app-1.2.tar"
    ti = lt.torrent_info(meta.metainfo)
    assert ti.priv() and str(ti.info_hashes().v1) == meta.info_hash
    # piece hashes are libtorrent's own
    for i in range(meta.num_pieces):
        chunk = data[i * MiB:(i + 1) * MiB]
        assert bytes(ti.hash_for_piece(i)) == hashlib.sha1(chunk).digest()


def test_same_file_same_info_hash(payload: Path) -> None:
    assert make_torrent(payload).info_hash == make_torrent(payload).info_hash


def test_load_metainfo_round_trip(payload: Path) -> None:
    meta = make_torrent(payload)
    again = load_metainfo(meta.metainfo, sha256=meta.sha256.upper())
    assert again == meta


@pytest.mark.parametrize("path_kind", ["missing", "directory", "empty"])
def test_make_torrent_rejects_bad_paths(tmp_path: Path, path_kind: str) -> None:
    p = tmp_path / "x"
    if path_kind == "directory":
        p.mkdir()
    elif path_kind == "empty":
        p.write_bytes(b"")
    with pytest.raises(PayloadError, match={"missing": "does not exist",
                                            "directory": "is a directory",
                                            "empty": "is empty"}[path_kind]):
        make_torrent(p)


@pytest.mark.parametrize("mangle", [
    lambda b: b"",
    lambda b: b"not bencode at all",
    lambda b: b[: len(b) // 2],
    lambda b: b"i42e",
    lambda b: b"d4:spam4:eggse",
])
def test_load_metainfo_rejects_corrupt_bytes(payload: Path, mangle) -> None:
    with pytest.raises(PayloadError, match="metainfo"):
        load_metainfo(mangle(make_torrent(payload).metainfo))


def _torrent(tmp_path: Path, files: dict[str, bytes], private: bool) -> bytes:
    root = tmp_path / "t"
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    target = root / next(iter(files)) if len(files) == 1 else root
    ct = lt.create_torrent(lt.list_files(str(target)), 16 * KiB, lt.create_torrent.v1_only)
    ct.set_priv(private)
    lt.set_piece_hashes(ct, str(target.parent))
    return lt.bencode(ct.generate())


def test_load_metainfo_rejects_public_torrent(tmp_path: Path) -> None:
    with pytest.raises(PayloadError, match="not private"):
        load_metainfo(_torrent(tmp_path, {"a.tar": b"x" * 100}, private=False))


def test_load_metainfo_rejects_multi_file_torrent(tmp_path: Path) -> None:
    with pytest.raises(PayloadError, match="2 files"):
        load_metainfo(_torrent(tmp_path, {"a": b"x" * 100, "b": b"y" * 100}, private=True))


def test_load_metainfo_rejects_oversized(payload: Path) -> None:
    with pytest.raises(PayloadError, match="more than"):
        load_metainfo(b"d" + b"0:" * (MAX_METAINFO_BYTES // 2 + 1) + b"e")


def test_bad_expected_sha256_is_rejected(payload: Path) -> None:
    meta = make_torrent(payload)
    with pytest.raises(PayloadError, match="SHA-256"):
        load_metainfo(meta.metainfo, sha256="abc")


def test_closed_swarm_settings_keep_the_swarm_closed() -> None:
    from zkdeploy.transfer.swarm_config import SwarmConfig, closed_swarm_settings

    s = closed_swarm_settings(SwarmConfig(listen_ip="198.18.0.3", listen_port=6881,
                                          upload_rate_limit=1000))
    assert s["listen_interfaces"] == "198.18.0.3:6881"
    for key in ("enable_dht", "enable_lsd", "enable_upnp", "enable_natpmp",
                "enable_incoming_utp", "enable_outgoing_utp", "listen_system_port_fallback"):
        assert s[key] is False, key
    assert s["max_retry_port_bind"] == 0 and s["min_reconnect_time"] == 1
    assert s["max_failcount"] == 100 and s["unchoke_slots_limit"] == -1
    assert s["upload_rate_limit"] == 1000 and s["download_rate_limit"] == 0
    assert closed_swarm_settings(SwarmConfig(listen_ip="::1", listen_port=0))[
        "listen_interfaces"] == "[::1]:0"


def test_metainfo_is_read_without_libtorrent_as_libtorrent_reads_it(payload: Path) -> None:
    """The agent reads staged metainfo without loading libtorrent (only its swarm worker does)."""
    meta = make_torrent(payload)
    ti = lt.torrent_info(meta.metainfo)
    assert meta.info_hash == str(ti.info_hashes().v1)
    assert (meta.name, meta.size, meta.piece_size, meta.num_pieces) == (
        ti.name(), ti.total_size(), ti.piece_length(), ti.num_pieces())
    code = ("import sys; from zkdeploy.transfer.transport import Transport; "
            "from zkdeploy.transfer.metainfo import load_metainfo; "
            f"m = load_metainfo(open({str(payload) + '.torrent'!r}, 'rb').read()); "
            "print(m.info_hash, 'libtorrent' in sys.modules)")
    Path(str(payload) + ".torrent").write_bytes(meta.metainfo)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [meta.info_hash, "False"]


@pytest.mark.parametrize("mangle, why", [
    (lambda b: b.replace(b"6:lengthi", b"6:lengthi-"), "empty payload"),
    (lambda b: b.replace(b"12:piece lengthi", b"12:piece lengthi9"), "piece table"),
    (lambda b: b + b"x", "after its end"),
    (lambda b: b"d4:infod" * 40 + b"e" * 80, "nested too deeply"),
    (lambda b: b.replace(b"4:name", b"4:namX"), "unsafe"),
])
def test_load_metainfo_says_what_is_wrong(payload: Path, mangle, why: str) -> None:
    with pytest.raises(PayloadError, match=why):
        load_metainfo(mangle(make_torrent(payload).metainfo))


def test_downloaders_ask_first_for_slices_that_cover_every_piece_once() -> None:
    from zkdeploy.transfer.striping import OTHERS, OWN_SLICE, stripe_priorities

    seed = ("10.0.0.9", 1)
    downloaders = [("10.0.0.1", 1), ("10.0.0.2", 1), ("10.0.0.3", 1)]
    slices = []
    for me in downloaders:
        priorities, mine = stripe_priorities(me, frozenset(downloaders) | {seed}, {seed}, 10)
        assert mine is not None and set(priorities) == {OWN_SLICE, OTHERS}  # every piece still wanted
        assert [i for i, p in enumerate(priorities) if p == OWN_SLICE] == list(mine)
        slices.append(mine)
    assert sorted(i for s in slices for i in s) == list(range(10))  # disjoint, and together whole
    alone, mine = stripe_priorities(("10.0.0.1", 1), {seed}, {seed}, 4)
    assert mine is None and len(set(alone)) == 1 and len(alone) == 4
