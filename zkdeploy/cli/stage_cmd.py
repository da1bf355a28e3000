"""``zkdeploy stage``: hash a payload, make its torrent and record the release; optionally seed it."""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO
from urllib.parse import urlparse

import click

from zkdeploy.cli.commands import who
from zkdeploy.cli.context import Ctx, handle_errors, json_option, pass_ctx, positive_seconds
from zkdeploy.cli.live import Meter
from zkdeploy.cli.output import emit_json, say
from zkdeploy.cli.security_cmd import release_signature
from zkdeploy.cli.seeding import seed_endpoint, seed_in_foreground
from zkdeploy.errors import ConfigError, ConflictError, PayloadError
from zkdeploy.model import Release
from zkdeploy.names import check_name
from zkdeploy.signing import SIGNATURE_BLOB, load_private
from zkdeploy.transfer.fetch import is_url, open_origin
from zkdeploy.transfer.metainfo import payload_digest
from zkdeploy.transfer.torrent import make_torrent
from zkdeploy.transfer.transport import TORRENT_BLOB
from zkdeploy.transfer.unpack import check_archive


@click.command("stage")
@click.argument("service")
@click.argument("version")
@click.argument("payload")
@click.option("--no-torrent", is_flag=True, help="Agents fetch from the origin only (no swarm).")
@click.option("--seed-until", type=click.IntRange(1), metavar="N",
              help="Seed the payload from here until N hosts hold it (shows progress).")
@click.option("--listen", default="127.0.0.1:0", show_default=True, metavar="IP:PORT",
              help="With --seed-until: where this seeder listens (an address the agents reach).")
@click.option("--seed-timeout", type=float, default=3600.0, show_default=True,
              help="With --seed-until: give up after this many seconds (exit 5).")
@click.option("--sign", "sign_key", metavar="KEYFILE", type=click.Path(exists=True, dir_okay=False),
              help="Sign the release record with this key (zkdeploy keys generate).")
@json_option
@pass_ctx
@handle_errors
def stage(ctx: Ctx, service: str, version: str, payload: str, no_torrent: bool, seed_until: int | None,
          listen: str, seed_timeout: float, sign_key: str | None, as_json: bool) -> None:
    """Stage VERSION of SERVICE: hash PAYLOAD, make its torrent, record the release.

    PAYLOAD is a tar archive (optionally compressed), given as a path that the
    agents can read or as an http(s) URL: that is the origin, the fallback
    when the swarm stalls.  Agents that run SERVICE fetch it from their peers
    (ZooKeeper is the tracker), verify its SHA-256 and unpack it beside the
    running release.  The first copy comes from this command with
    --seed-until N, or from a `zkdeploy seed` daemon on the origin's host; when
    nobody seeds, one agent is elected to fetch it from the origin and the
    others get it from that agent.
    """
    check_name("service", service)
    check_name("version", version)
    if seed_until:
        seed_endpoint(listen)  # a bad --listen refuses before anything is staged
        positive_seconds("--seed-timeout", seed_timeout)
    if not is_url(payload) and not Path(payload).is_file():
        raise ConfigError(f"payload {payload} does not exist or is not a file")
    key = load_private(sign_key) if sign_key else None
    store = ctx.store()
    catalog, _ = store.catalog()
    if service not in (catalog or {}).get("services", {}):
        raise ConfigError(f"unknown service {service!r}: it is not in the catalog (zkdeploy services apply)")
    staged = store.release(service, version)
    with _local_copy(payload, quiet=as_json) as path:
        check_archive(path)
        if no_torrent:
            sha, size = payload_digest(path)
            meta = None
        else:
            meta = make_torrent(path)
            if meta.sha256 is None:  # make_torrent records the payload's SHA-256 as it hashes the pieces
                raise PayloadError(f"{payload}: no SHA-256 was recorded for its torrent")
            sha, size = meta.sha256, meta.size
        origin = payload if is_url(payload) else str(Path(payload).resolve())
        release = Release(service=service, version=version, sha256=sha, size=size, origin=origin,
                          staged_by=who(), staged_at=time.time(), info_hash=meta.info_hash if meta else None)
        blobs = {TORRENT_BLOB: meta.metainfo} if meta else {}
        if key is not None:
            blobs[SIGNATURE_BLOB] = release_signature(store, key, service, version, sha, size)
        if staged is not None and staged.sha256 != sha:
            raise ConfigError(f"{service}@{version} is already staged with a different payload (sha256 "
                              f"{staged.sha256[:12]}..., this one {sha[:12]}...); stage a new version instead; "
                              f"nothing was changed")
        try:
            store.put_release(release, blobs or None)
        except ConflictError as exc:  # staged meanwhile by someone else: refused, nothing of ours was written
            raise ConfigError(f"{exc}; nothing was changed") from None
        if as_json:
            emit_json({"service": service, "version": version, "sha256": sha, "size": size, "origin": origin,
                       "info_hash": release.info_hash})
        else:
            say(f"staged {service}@{version}: {size} bytes, sha256 {sha}"
                + (f", info-hash {meta.info_hash}" if meta else ""))
        if seed_until and meta is not None:
            seed_in_foreground(store, release, meta, path, seed_until, listen, seed_timeout, quiet=as_json)


@contextlib.contextmanager
def _local_copy(payload: str, *, quiet: bool = False) -> Iterator[Path]:
    """The payload as a local file: the path itself, or a temporary download of a URL (with a
    progress bar on a terminal, a line per twentieth otherwise)."""
    if not is_url(payload):
        path = Path(payload)
        if not path.is_file():
            raise ConfigError(f"payload {payload} does not exist or is not a file")
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="zkdeploy-stage-") as tmp:
        local = Path(tmp) / (Path(urlparse(payload).path).name or "payload")
        try:
            with open_origin(payload, 30.0) as src, open(local, "wb") as out:
                _download(src, out, local.name, quiet)
        except OSError as exc:
            raise PayloadError(f"cannot fetch payload from {payload}: {exc}") from None
        yield local


def _download(src: IO[bytes], out: IO[bytes], name: str, quiet: bool) -> None:
    """Copy ``src`` to ``out``, showing how far it got (in MiB, of its Content-Length when known)."""
    length = getattr(src, "headers", {}).get("Content-Length")
    total = int(length) if length and str(length).isdigit() else 0
    step = max(total // 20, 1 << 20) if total else 64 << 20
    copied = shown = 0
    with Meter(f"download {name} (MiB)", max(1, -(-total // (1 << 20))), quiet=quiet) as meter:
        while chunk := src.read(1 << 20):
            out.write(chunk)
            copied += len(chunk)
            if copied - shown >= step:
                shown = copied
                meter.update(copied >> 20, f"{copied / (1 << 20):.1f} MiB")
        meter.update(-(-copied // (1 << 20)), f"{copied / (1 << 20):.1f} MiB, done")
