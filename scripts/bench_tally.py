#!/usr/bin/env python3
"""Benchmark: what one count of the online tokens costs as the whole tree grows.

The quorum decision counts the online tokens under ``up/<service>`` with
ZooKeeper's ``getAllChildrenNumber`` (``Session.tally``: a stat, the count and
the stat again, sent together).  ZooKeeper 3.8 answers ``getAllChildrenNumber``
by scanning every node of its whole tree (``DataTree.getAllChildrenNumber``
filters ``nodes`` by path prefix, in parallel), so its cost grows with the
size of the whole tree, not with the service.  This script starts a private
ZooKeeper, grows an unrelated part of the tree to each size in turn, and times,
side by side in one run, ``Session.tally`` of a small service and a plain
``exists`` (one request) on the same path.

Last line: tally_ms_<size>=<ms> ... exists_ms=<ms> ratio_at_largest=<tally/exists>
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kazoo.client import KazooClient

from zkdeploy.coordination.zookeeper import ZooKeeperSession
from zkdeploy.testing.zkserver import ZkCluster


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median milliseconds of ``fn()`` over ``repeat`` calls."""
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def grow(client: KazooClient, base: str, total: int) -> None:
    """Make ``base`` hold ``total`` children (asynchronous creates, then a check)."""
    have = len(client.get_children(base))
    pending = [client.create_async(f"{base}/n{i:07d}") for i in range(have, total)]
    for result in pending:
        result.get(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,50000", help="znodes elsewhere in the tree, comma-separated")
    parser.add_argument("--repeat", type=int, default=300, help="timed calls per figure")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    cluster = ZkCluster(size=1).start()
    try:
        bulk = KazooClient(hosts=cluster.hosts, timeout=30)
        bulk.start(timeout=30)
        session = ZooKeeperSession(cluster.hosts, session_timeout=30).start()
        service = "/bench/up/app"
        for node in ("a", "b", "c"):
            bulk.ensure_path(f"{service}/{node}")
            bulk.create(f"{service}/{node}/on", ephemeral=True)
        bulk.ensure_path("/bench/elsewhere")
        rows = []
        for size in sizes:
            grow(bulk, "/bench/elsewhere", size)
            below, _stat = session.tally(service)
            assert below == 6, f"the count is wrong: {below}"
            tally_ms = timed(lambda: session.tally(service), args.repeat)
            exists_ms = timed(lambda: session.exists(service), args.repeat)
            rows.append((size, tally_ms, exists_ms))
            print(f"{size:>8} znodes elsewhere: tally {tally_ms:6.2f} ms, exists {exists_ms:5.2f} ms "
                  f"(median of {args.repeat})", flush=True)
        session.close()
        bulk.stop()
        bulk.close()
    finally:
        cluster.stop()
    figures = " ".join(f"tally_ms_{size}={t:.2f}" for size, t, _ in rows)
    largest = rows[-1]
    print(f"{figures} exists_ms={largest[2]:.2f} ratio_at_largest={largest[1] / largest[2]:.1f}")


if __name__ == "__main__":
    main()
