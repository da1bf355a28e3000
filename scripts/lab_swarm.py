#!/usr/bin/env python3
"""Lab benchmark: payload swarm vs one HTTP origin across N shaped "hosts".

Run as root from the repository, after scripts/setup:  sudo .venv/bin/python scripts/lab_swarm.py [--hosts 8]
[--size-mb 256] [--rate-mbit 100]

Each host is a network namespace on one Linux bridge, with an address in
198.18.0.0/15, no default route, and a tbf qdisc of --rate-mbit on its
egress and on the bridge side of its veth (so its ingress is shaped too).
Host 1 seeds (zkdeploy.transfer.peer_main --seed); hosts 2..N download with
the full peer list, as ZooKeeper would give it.  Then, in the same run, hosts
2..N fetch the same payload at once over plain HTTP from `python -m
http.server` on host 1.  The clock starts when the downloaders are launched
(interpreter start-up included) and stops when the last host has a verified
file.  The last line printed is:

    swarm_vs_ideal=<swarm/ideal> speedup_vs_origin=<origin/swarm>

The lab (namespaces, bridge, processes, files) is torn down on exit, on
Ctrl-C and on SIGTERM; leftovers of an earlier run are removed at start.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from zkdeploy.testing.netns import NetLab  # noqa: E402
from zkdeploy.transfer.torrent import make_torrent  # noqa: E402

PREFIX = "zkswl"          # every namespace, link and temp dir of this lab starts with it
LAB = NetLab(PREFIX)
PORT = 6881
HTTP_PORT = 8000

HTTP_CLIENT = r"""
import hashlib, sys, urllib.request
url, out, want = sys.argv[1:4]
h = hashlib.sha256()
with urllib.request.urlopen(url, timeout=60) as r, open(out, "wb") as f:
    while True:
        b = r.read(1 << 20)
        if not b:
            break
        h.update(b); f.write(b)
sys.exit(0 if h.hexdigest() == want else 3)
"""


def ns(i: int) -> str:
    return LAB.ns(i)


def ip_of(i: int) -> str:
    return LAB.ip(i)


def cleanup_network() -> None:
    """Remove every namespace and link of this lab, from this or an earlier run."""
    LAB.cleanup()


def build_network(n: int, rate_mbit: int) -> None:
    LAB.build(n, rate_mbit)


class Proc:
    """A process in a namespace whose stdout JSON events are collected."""

    def __init__(self, i: int, argv: list[str], log: Path, json_events: bool = True) -> None:
        self.host = i
        self.events: list[dict[str, Any]] = []
        self.done = threading.Event()
        self._log = open(log, "wb")  # noqa: SIM115 - kept open for the process's life, closed in stop()
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns(i), *argv], cwd=REPO, env=env,
                                     stdout=subprocess.PIPE if json_events else subprocess.DEVNULL,
                                     stderr=self._log, text=True)
        if json_events:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            self.events.append(ev)
            if ev["event"] in ("done", "error", "seeding"):
                self.done.set()
        self.done.set()

    def event(self, name: str) -> dict[str, Any] | None:
        return next((e for e in self.events if e["event"] == name), None)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def run_swarm(args: argparse.Namespace, n: int, work: Path, torrent: Path, payload: Path,
              sha: str, procs: list[Proc]) -> tuple[float, dict[str, Any]]:
    py = sys.executable
    peer_args = [a for i in range(1, n + 1) for a in ("--peer", f"{ip_of(i)}:{PORT}")]
    common = ["-m", "zkdeploy.transfer.peer_main", "--torrent", str(torrent),
              "--stall-timeout", str(args.stall_timeout)]
    if args.no_stripe:
        common.append("--no-stripe")
    for s in args.setting:
        common += ["--setting", s]
    seed_extra = ["--seed-max-uploads", str(args.seed_max_uploads)]
    for s in args.seed_setting:
        seed_extra += ["--setting", s]
    seeder = Proc(1, [py, *common, *seed_extra, "--listen", f"{ip_of(1)}:{PORT}",
                      "--seed", str(payload)], work / "seed.log")
    procs.append(seeder)
    if not seeder.done.wait(30) or seeder.event("seeding") is None:
        raise RuntimeError(f"seeder did not start: {seeder.events}")
    t0 = time.time()
    leechers = []
    for i in range(2, n + 1):
        p = Proc(i, [py, *common, "--listen", f"{ip_of(i)}:{PORT}", "--download",
                     str(work / f"h{i}"), "--sha256", sha, *peer_args], work / f"h{i}.log")
        procs.append(p)
        leechers.append(p)
    deadline = time.monotonic() + args.timeout
    for p in leechers:
        if not p.done.wait(max(0.0, deadline - time.monotonic())):
            raise RuntimeError(f"host {p.host} did not finish within {args.timeout}s")
    times = []
    for p in leechers:
        ev = p.event("done")
        if ev is None:
            raise RuntimeError(f"host {p.host} failed: {p.events[-1:]}")
        times.append((ev["t"] - t0, p.host, ev))
    swarm_time = max(t for t, _, _ in times)
    for p in procs:
        p.stop()
    seed_final = seeder.event("final") or {}
    stats = {
        "per_host": sorted((round(t, 1), h) for t, h, _ in times),
        "seed_copies": seed_final.get("total_upload", 0) / payload.stat().st_size,
        "redundant": sum(ev["total_download"] for _, _, ev in times)
        / (payload.stat().st_size * len(times)),
    }
    for i in range(2, n + 1):
        shutil.rmtree(work / f"h{i}", ignore_errors=True)
    return swarm_time, stats


def run_origin(n: int, work: Path, payload: Path, sha: str, procs: list[Proc],
               timeout: float) -> float:
    py = sys.executable
    server = Proc(1, [py, "-m", "http.server", str(HTTP_PORT), "--bind", ip_of(1),
                      "--directory", str(payload.parent)], work / "http.log", json_events=False)
    procs.append(server)
    time.sleep(1.5)
    url = f"http://{ip_of(1)}:{HTTP_PORT}/{payload.name}"
    t0 = time.time()
    clients = [Proc(i, [py, "-c", HTTP_CLIENT, url, str(work / f"http-h{i}"), sha],
                    work / f"http-h{i}.log", json_events=False) for i in range(2, n + 1)]
    procs.extend(clients)
    deadline = time.monotonic() + timeout
    for c in clients:
        rc = c.proc.wait(max(1.0, deadline - time.monotonic()))
        if rc != 0:
            raise RuntimeError(f"HTTP client on host {c.host} failed with {rc}")
    elapsed = time.time() - t0
    server.stop()
    for i in range(2, n + 1):
        (work / f"http-h{i}").unlink(missing_ok=True)
    return elapsed


def write_payload(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 16 << 20))
            f.write(chunk)
            left -= len(chunk)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hosts", type=int, default=8, help="hosts including the seeder")
    p.add_argument("--size-mb", type=int, default=256, help="payload size in MiB")
    p.add_argument("--rate-mbit", type=int, default=100, help="link rate per host")
    p.add_argument("--skip-origin", action="store_true", help="only the swarm (exploration)")
    p.add_argument("--no-stripe", action="store_true", help="downloaders use plain rarest-first")
    p.add_argument("--seed-max-uploads", type=int, default=-1)
    p.add_argument("--setting", action="append", default=[], help="KEY=VALUE for every peer")
    p.add_argument("--seed-setting", action="append", default=[], help="KEY=VALUE for the seeder")
    p.add_argument("--stall-timeout", type=float, default=120)
    p.add_argument("--timeout", type=float, default=1800, help="per leg, seconds")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("lab_swarm.py needs root (network namespaces, tc)", file=sys.stderr)
        return 2
    if args.hosts < 2:
        print("--hosts must be at least 2", file=sys.stderr)
        return 2
    n = args.hosts
    size = args.size_mb << 20

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    for old in Path(tempfile.gettempdir()).glob(f"{PREFIX}-*"):
        shutil.rmtree(old, ignore_errors=True)
    cleanup_network()
    work = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-"))
    procs: list[Proc] = []
    try:
        build_network(n, args.rate_mbit)
        payload = work / "origin" / "payload.tar"
        payload.parent.mkdir()
        write_payload(payload, size)
        meta = make_torrent(payload)
        torrent = work / "payload.torrent"
        torrent.write_bytes(meta.metainfo)
        ideal = size * 8 / (args.rate_mbit * 1e6)
        print(f"hosts={n} (1 seeder + {n - 1} downloaders) payload={args.size_mb} MiB "
              f"piece={meta.piece_size >> 10} KiB rate={args.rate_mbit} Mbit/s", flush=True)
        print(f"ideal (payload / link rate): {ideal:.1f} s", flush=True)
        swarm_time, stats = run_swarm(args, n, work, torrent, payload, meta.sha256, procs)
        print(f"swarm: last host complete and verified after {swarm_time:.1f} s; per host "
              f"{stats['per_host']}; seeder sent {stats['seed_copies']:.2f} copies; "
              f"downloaders received {stats['redundant']:.3f}x the payload", flush=True)
        if args.skip_origin:
            print(f"swarm_vs_ideal={swarm_time / ideal:.2f} speedup_vs_origin=skipped")
            return 0
        origin_time = run_origin(n, work, payload, meta.sha256, procs, args.timeout)
        print(f"origin (HTTP, {n - 1} clients at once): {origin_time:.1f} s", flush=True)
        print(f"swarm_vs_ideal={swarm_time / ideal:.2f} "
              f"speedup_vs_origin={origin_time / swarm_time:.2f}")
        return 0
    except KeyboardInterrupt:
        print("interrupted; tearing the lab down", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for proc in procs:
            try:
                proc.stop()
            except Exception as e:  # keep tearing down the rest
                print(f"could not stop host {proc.host} process: {e}", file=sys.stderr)
        cleanup_network()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
