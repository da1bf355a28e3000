"""The operator's side of the swarm: seeding a staged payload, and looking at a swarm."""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import click

from zkdeploy.cli.context import Ctx, handle_errors, json_option, pass_ctx
from zkdeploy.cli.live import Meter
from zkdeploy.cli.output import emit_json, say, table
from zkdeploy.coordination import Store
from zkdeploy.errors import ConfigError, PayloadError
from zkdeploy.model import Release
from zkdeploy.names import check_name
from zkdeploy.transfer.metainfo import TorrentMeta
from zkdeploy.transfer.swarm import SwarmSession
from zkdeploy.transfer.swarm_config import SwarmConfig

log = logging.getLogger(__name__)


def seeder_name() -> str:
    host = "".join(c if c.isalnum() or c in "-._" else "-" for c in socket.gethostname())
    return check_name("node", f"seeder-{host or 'local'}"[:100])


def seed_endpoint(text: str) -> tuple[str, int]:
    """``--listen IP:PORT`` as (ip, port); ConfigError (exit 2) unless it is an IP address and a port."""
    host, _, port = text.rpartition(":")
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise ConfigError(f"--listen {text!r}: expected IP:PORT (an IP address, e.g. 0.0.0.0:6881)") from None
    if not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--listen {text!r}: expected IP:PORT with a port from 0 to 65535")
    return host.strip("[]"), int(port)


def seed_in_foreground(store: Store, release: Release, meta: TorrentMeta, path: Path, until: int,
                       listen: str, timeout: float, quiet: bool = False) -> None:
    """Seed ``path`` until ``until`` hosts hold the verified payload, showing how many do (a progress
    bar on a terminal, a line per change otherwise, nothing when ``quiet``); PayloadError after ``timeout``."""
    ip, port = seed_endpoint(listen)
    session = SwarmSession(SwarmConfig(listen_ip=ip, listen_port=port, allow_multiple_connections_per_ip=True))
    address, port = session.start()
    name = seeder_name()
    try:
        session.seed(meta, str(path))
        store.register_peer(meta.info_hash, name, {"address": address, "port": port, "complete": True,
                                                   "rack": None, "dc": None, "seeder": True})
        deadline = time.monotonic() + timeout
        with Meter(f"hosts hold {release.service}@{release.version}", until, quiet=quiet) as shown:
            while True:
                holders = store.holders(release.service, release.version)
                peers = store.peers(meta.info_hash)
                rate = sum(int(p.get("download_rate") or 0) for p in peers.values())
                shown.update(len(holders), f"swarm {rate / 1e6:.1f} MB/s, {len(peers)} peer(s)")
                if len(holders) >= until:
                    return
                if time.monotonic() > deadline:
                    raise PayloadError(f"only {len(holders)} of {until} hosts hold the payload after {timeout:g}s")
                time.sleep(1.0)
    finally:
        try:
            store.unregister_peer(meta.info_hash, name)
        finally:
            session.close()


def _resolve(store: Store, target: str) -> tuple[str, Release | None]:
    if "@" in target:
        service, _, version = target.partition("@")
        release = store.release(check_name("service", service), check_name("version", version))
        if release is None:
            raise ConfigError(f"{target} is not staged")
        if not release.info_hash:
            raise ConfigError(f"{target} was staged without a torrent (--no-torrent)")
        return release.info_hash, release
    check_name("info-hash", target)
    return target.lower(), None


@click.command("swarm")
@click.argument("target", metavar="INFOHASH|SERVICE@VERSION")
@json_option
@pass_ctx
@handle_errors
def swarm(ctx: Ctx, target: str, as_json: bool) -> None:
    """List the peers of a payload's swarm, named by its INFOHASH or by the SERVICE@VERSION staged
    with it: where they are, whether complete, their rates.  With SERVICE@VERSION, the holders whose
    swarm worker is stopped (idle) are listed too, as asleep: a fetcher wakes them when it needs them."""
    store = ctx.store()
    info_hash, release = _resolve(store, target)
    peers = store.peers(info_hash)
    holders = store.holders(release.service, release.version) if release else None
    asleep = sorted(set(holders or ()) - set(peers))
    if as_json:
        emit_json({"info_hash": info_hash, "peers": peers, "holders": holders, "asleep": asleep})
        return
    if not peers and not asleep:
        say(f"no peer announces {info_hash}")
        return
    rows = [[n, f"{p.get('address')}:{p.get('port')}", p.get("rack") or "-", p.get("dc") or "-",
             "yes" if p.get("complete") else "no",
             f"{100 * float(p.get('progress', 1.0 if p.get('complete') else 0)):.0f}%",
             f"{int(p.get('download_rate') or 0) / 1e6:.1f}", f"{int(p.get('upload_rate') or 0) / 1e6:.1f}"]
            for n, p in sorted(peers.items())]
    rows += [[n, "asleep", "-", "-", "yes", "100%", "-", "-"] for n in asleep]
    table(f"swarm {info_hash}", ["NODE", "ENDPOINT", "RACK", "DC", "COMPLETE", "PROGRESS", "DOWN MB/s", "UP MB/s"],
          rows)
    if asleep:
        say(f"{len(asleep)} holder(s) asleep: their swarm worker stopped when idle; a fetcher wakes up to "
            "3 of them when no peer seeds")


@click.command("seed")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="An agent-style file: node, address, zookeeper, swarm (services may be []).")
def seed(config_path: str) -> None:
    """Run a long-lived seeder: it seeds every staged release whose origin is a file on this host.

    Run it on the host where payloads are staged (an artifact store), so the
    first copy of each payload comes from there and not from an agent's
    fallback to the origin.
    """
    from zkdeploy import logs
    from zkdeploy.config.loader import load_agent_config
    from zkdeploy.errors import ZkdeployError
    from zkdeploy.transfer.transport import Transport

    try:
        config = load_agent_config(config_path)
        logs.setup(fmt=config.log_format, node=config.node)
        run_seeder(config, Transport(config, idle_stop=0))  # a seeder is no holder: nobody could wake it
    except ZkdeployError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(exc.exit_code) from None


def run_seeder(config: Any, transport: Any) -> None:
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    zk = config.zookeeper
    transport.start()
    store = Store.connect(zk.hosts, zk.root, zk.security(), session_timeout=zk.session_timeout,
                          connect_timeout=zk.connect_timeout, operation_timeout=zk.operation_timeout)
    transport.attach(store)
    wake = threading.Event()
    store.watch_staging(lambda *_: wake.set())
    seeded: set[str] = set()
    generation = store.generation
    try:
        while not stopping.is_set():
            if store.generation != generation:
                generation = store.generation
                transport.reannounce()
            for service in store.staged_services():
                for version, release in store.releases(service).items():
                    origin = Path(release.origin)
                    if not release.info_hash or release.info_hash in seeded or not origin.is_file():
                        continue
                    meta = transport.metainfo(release)
                    if meta is not None:
                        transport.seed(meta, origin)
                        seeded.add(release.info_hash)
                        log.info("seeding %s@%s from %s", service, version, origin)
            wake.wait(5.0)
            wake.clear()
    finally:
        transport.close()
        store.close()
