"""A one-payload swarm peer as a process, for tests and the lab.

    python -m zkdeploy.transfer.peer_main --torrent T --listen IP:PORT \\
        (--seed FILE | --download DIR --sha256 HEX) [--peer IP:PORT ...] [--peers-file F]

Prints one JSON object per line on stdout: ``listening`` (ip, port),
``progress`` (about once a second), then ``done`` (path, elapsed, totals) or
``error`` (kind, message).  After ``done`` (or at once with ``--seed``) it
keeps seeding until SIGTERM/SIGINT, unless ``--exit-when-done``.  The peer
list is the ``--peer`` options plus the lines of ``--peers-file``, re-read on
every refresh and on SIGUSR1 (how a test plays the ZooKeeper watch).
Exit status: 0, or the ZkdeployError's exit code.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from zkdeploy.errors import ZkdeployError
from zkdeploy.transfer.metainfo import load_metainfo
from zkdeploy.transfer.swarm import SwarmSession
from zkdeploy.transfer.swarm_config import Endpoint, SwarmConfig, TransferStatus


def _emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, "t": time.time(), **fields}) + "\n")
    sys.stdout.flush()


def _endpoint(text: str) -> Endpoint:
    host, _, port = text.strip().rpartition(":")
    return host.strip("[]"), int(port)


def _setting(text: str) -> tuple[str, Any]:
    key, _, raw = text.partition("=")
    value: Any = raw
    if raw.lower() in ("true", "false"):
        value = raw.lower() == "true"
    else:
        try:
            value = int(raw)
        except ValueError:
            pass
    return key, value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m zkdeploy.transfer.peer_main")
    p.add_argument("--torrent", required=True, help="bencoded metainfo file")
    p.add_argument("--listen", default="127.0.0.1:0", help="IP:PORT (port 0: any free port)")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--seed", metavar="FILE", help="seed this payload file")
    mode.add_argument("--download", metavar="DIR", help="fetch into this staging directory")
    p.add_argument("--sha256", help="expected SHA-256 (required with --download)")
    p.add_argument("--peer", action="append", default=[], metavar="IP:PORT")
    p.add_argument("--peers-file", help="file of IP:PORT lines, re-read on each refresh")
    p.add_argument("--upload-rate", type=int, default=0, help="bytes/s, 0 = unlimited")
    p.add_argument("--download-rate", type=int, default=0, help="bytes/s, 0 = unlimited")
    p.add_argument("--allow-multi", action="store_true",
                   help="allow several connections per IP (peers sharing 127.0.0.1)")
    p.add_argument("--stall-timeout", type=float, default=60.0)
    p.add_argument("--resume-interval", type=float, default=10.0)
    p.add_argument("--free-bytes", type=int, help="pretend the disk has this many bytes free")
    p.add_argument("--seed-max-uploads", type=int, default=-1)
    p.add_argument("--no-stripe", action="store_true", help="plain rarest-first piece order")
    p.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE",
                   help="extra libtorrent setting")
    p.add_argument("--exit-when-done", action="store_true")
    p.add_argument("--log-level", default="WARNING")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    ip, port = _endpoint(args.listen)
    free = args.free_bytes
    config = SwarmConfig(
        listen_ip=ip, listen_port=port, upload_rate_limit=args.upload_rate,
        download_rate_limit=args.download_rate,
        allow_multiple_connections_per_ip=args.allow_multi,
        free_space=(lambda _d: free) if free is not None else None,
        resume_save_interval=args.resume_interval, seed_max_uploads=args.seed_max_uploads,
        stripe_pieces=not args.no_stripe, extra_settings=dict(map(_setting, args.setting)))
    fixed = [_endpoint(x) for x in args.peer]

    def peers() -> list[Endpoint]:
        out = list(fixed)
        if args.peers_file and os.path.exists(args.peers_file):
            with open(args.peers_file) as f:
                out += [_endpoint(line) for line in f if line.strip()]
        return out

    session = SwarmSession(config)
    # A signal handler must not take the session's lock (the interrupted main
    # thread may hold it): hand the poke to a thread, as a ZooKeeper watch would.
    signal.signal(signal.SIGUSR1, lambda *_: threading.Thread(
        target=session.notify_peers_changed, daemon=True).start())
    try:
        with open(args.torrent, "rb") as f:
            meta = load_metainfo(f.read())
        listen_ip, listen_port = session.start()
        _emit("listening", ip=listen_ip, port=listen_port, pid=os.getpid())
        if args.seed:
            session.seed(meta, args.seed)
            _emit("seeding", info_hash=meta.info_hash)
        else:
            if not args.sha256:
                raise SystemExit("--sha256 is required with --download")
            last = [0.0]

            def progress(st: TransferStatus) -> None:
                if time.monotonic() - last[0] >= 1.0:
                    last[0] = time.monotonic()
                    _emit("progress", progress=st.progress, total_download=st.total_download,
                          total_upload=st.total_upload, peers=st.num_peers, state=st.state)

            started = time.monotonic()
            path = session.download(meta, args.download, args.sha256, peers,
                                    stall_timeout=args.stall_timeout, on_progress=progress,
                                    cancel=stop)
            st = session.status(meta.info_hash)
            _emit("done", path=path, elapsed=time.monotonic() - started,
                  total_download=st.total_download, total_upload=st.total_upload,
                  hash_failures=st.hash_failures)
        if not args.exit_when_done:
            while not stop.wait(1.0):
                pass
        for st in session.torrents():
            _emit("final", info_hash=st.info_hash, total_download=st.total_download,
                  total_upload=st.total_upload, is_seeding=st.is_seeding)
        return 0
    except ZkdeployError as e:
        _emit("error", kind=type(e).__name__, message=str(e))
        return e.exit_code
    finally:
        session.close()


if __name__ == "__main__":
    sys.exit(main())
