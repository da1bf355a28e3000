#!/usr/bin/env python3
"""Benchmark: one rollout at N = 50, 150 and 500 agents on one real ZooKeeper.

Each size runs N real agents (zkdeploy.testing.simagents: the agent's code,
its coordination, decisions and journal, with a simulated service behind the
host seam) spread over a few processes, each agent with its own ZooKeeper
session and its own loop, against one private ZooKeeper server
(``maxClientCnxns=0``). The agent processes run with a 50 ms interpreter
switch interval (``--switch-interval``; 0.005 is Python's own): fifty agents
in one interpreter, each of which would have a machine of its own, otherwise
spend the machine in the wake-ups of their threads waiting for it. One
service, quorum N - k with k = N/20 down at once; a restart's stop, start and
health check take ``--step`` seconds in all. Payloads are staged and fetched
before the clock starts; the clock runs from queueing the deploy to the entry
done. Sizes run one after the other, each under its own root, in the same run,
so the columns are side by side.

Per size:
- rollout efficiency: ceil(N/k) x step / measured;
- ZooKeeper requests and watch notifications per node for the rollout
  (counted by a CountingSession under each agent's Store; the server's own
  count of packets received is printed beside it), and bytes read per node;
- the quorum decision: p50/p95 of the time in SlotRequest.poll (every poll,
  and the polls that took the slot);
- the CPU time per node of the agent processes and of the ZooKeeper server
  during the rollout (``/proc/<pid>/stat``): the server's share is what a
  fleet whose agents have machines of their own would put on its ensemble;
- how long ``zkdeploy status`` (cli.views.fleet_status) takes, mid-rollout and
  after, and how many requests it makes.

Last line: scale_n=<N> efficiency=<e> zk_requests_per_node=<r> notifications_per_node=<w> (the largest N)
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_overhead import handoffs, in_restart

from zkdeploy.cli.views import fleet_status
from zkdeploy.demo.scenario import wait_deploys
from zkdeploy.errors import ZkdeployError
from zkdeploy.model import ONLINE
from zkdeploy.testing.counting import Counts
from zkdeploy.testing.simagents import AgentProcesses, GroupSpec, Operator, merge, split
from zkdeploy.testing.zkserver import ZkCluster

SERVICE = "app"


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def server_packets(port: int) -> int:
    """The server's count of packets received (``mntr``), -1 if it does not say."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"mntr")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    for line in data.decode(errors="replace").splitlines():
        if line.startswith("zk_packets_received"):
            return int(line.split()[-1])
    return -1


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def process_cpu(pids: list[int]) -> float:
    """CPU-seconds (user + system) the processes ``pids`` have used so far, from /proc/<pid>/stat."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    return total / os.sysconf("SC_CLK_TCK")


def timed_status(operator: Operator) -> tuple[float, int]:
    """Seconds one ``zkdeploy status`` view took, and the requests it made."""
    before = operator.counts.snapshot()
    started = time.monotonic()
    fleet_status(operator.store)
    seconds = time.monotonic() - started
    return seconds, Counts.total(Counts.delta(operator.counts.snapshot(), before))


def one_size(zk: ZkCluster, workdir: Path, n: int, processes: int, step: float, timeout: float,
             nice: int = 0, switch: float | None = None) -> dict[str, Any]:
    k = max(1, n // 20)
    root = f"/scale{n}"
    durations = {"stop": step * 0.2, "start": step * 0.5, "health": step * 0.3}
    operator = Operator(zk.hosts, root)
    operator.put_catalog({"services": {SERVICE: {"quorum": n - k, "start": f"run {SERVICE}"}}})
    operator.stage(SERVICE, "1", at=1.0)
    nodes = [f"n{i:04d}" for i in range(1, n + 1)]
    specs = [GroupSpec(zk.hosts, root, group, [SERVICE], str(workdir / f"n{n}"), {SERVICE: "1"}, durations,
                       session_timeout=15.0, nice=nice, switch_interval=switch) for group in split(nodes, processes)]
    out: dict[str, Any] = {"n": n, "k": k, "processes": len(specs), "switch": switch}
    setup = time.monotonic()
    fleet = AgentProcesses(specs)
    try:
        fleet.call("start", timeout=600)
        operator.wait(lambda: sum(e.state == ONLINE for e in operator.store.current(SERVICE).values()) == n,
                      300, interval=1.0, why=f"{n} nodes online")
        operator.stage(SERVICE, "2")
        operator.wait(lambda: len(operator.store.holders(SERVICE, "2")) == n, 300, interval=1.0,
                      why=f"{n} nodes holding version 2")
        out["setup_seconds"] = time.monotonic() - setup
        time.sleep(2.0)
        out["status_idle"] = timed_status(operator)
        fleet.call("mark")
        packets = server_packets(zk.servers[0].client_port)
        mid: list[tuple[float, int]] = []
        started = time.time()
        cpu_before = cpu_times()
        agent_pids = [proc.pid for proc in fleet.procs if proc.pid is not None]
        zk_pids = [server.process.pid for server in zk.servers if server.process is not None]
        agents_cpu, zk_cpu = process_cpu(agent_pids), process_cpu(zk_pids)
        name = operator.deploy((SERVICE, "2"))[0]
        ideal = math.ceil(n / k) * step
        timer = threading.Timer(ideal / 2, lambda: mid.append(timed_status(operator)))
        timer.start()
        try:
            finished = wait_deploys(operator.store, [name], timeout)
            out["wall"] = finished - started
        except ZkdeployError as exc:
            out["error"] = str(exc)
            out["wall"] = float("nan")
        timer.cancel()
        cpu_after = cpu_times()
        out["agents_cpu"], out["zk_cpu"] = process_cpu(agent_pids) - agents_cpu, process_cpu(zk_pids) - zk_cpu
        out["cpu_busy"] = (cpu_after[0] - cpu_before[0]) / max(1.0, cpu_after[1] - cpu_before[1])
        out["server_packets"] = server_packets(zk.servers[0].client_port) - packets
        report = merge(fleet.call("report", timeout=600))
        out["status_mid"] = mid[0] if mid else (float("nan"), 0)
        out["status_after"] = timed_status(operator)
    finally:
        fleet.stop()
        operator.close()
    counts = report["counts"]
    out["ideal"] = ideal
    out["restarted"] = sum(1 for v in report["versions"].values() if v == "2")
    if "error" in out:  # not done in time: the efficiency of the progress made (restarts done / time)
        out["efficiency"] = out["restarted"] / n * ideal / timeout
    else:
        out["efficiency"] = ideal / out["wall"]
    # per node per rollout: every node restarts once, so the totals divided by the restarts made (N when
    # the rollout finished; fewer when it timed out, which extrapolates from the part that was made)
    per = max(1, out["restarted"])
    out["requests"] = sum(sum(c["requests"].values()) for c in counts.values()) / per
    out["notifications"] = sum(c["notifications"] for c in counts.values()) / per
    out["bytes"] = sum(c["bytes_read"] for c in counts.values()) / per
    out["agents_cpu_per_node"], out["zk_cpu_per_node"] = out["agents_cpu"] / per, out["zk_cpu"] / per
    out["server_per_node"] = out["server_packets"] / per
    kinds: Counter[str] = Counter()
    for c in counts.values():
        kinds.update(c["requests"])
    out["kinds"] = {kd: v / per for kd, v in kinds.most_common()}
    paths: Counter[str] = Counter()
    for p in report["paths"].values():
        paths.update(p)
    out["paths"] = {kd: v / per for kd, v in paths.most_common(12)}
    polls = [p[2] for p in report["polls"]]
    granted = [p[2] for p in report["polls"] if p[3]]
    out["polls"] = len(polls) / per
    out["poll_p50"], out["poll_p95"] = statistics.median(polls) if polls else float("nan"), pct(polls, 0.95)
    out["granted_p50"], out["granted_p95"] = (statistics.median(granted) if granted else float("nan"),
                                              pct(granted, 0.95))
    out["cycles"] = sum(len(c) for c in report["cycles"].values()) / per
    drains = sorted(t for t, _n, _s, step in report["timeline"] if step == "pre_stop")
    onlines = sorted(t for t, _n, _s, state in report["transitions"] if state == ONLINE)
    out["to_first_drain"] = drains[0] - started if drains else float("nan")
    out["to_kth_drain"] = drains[k - 1] - started if len(drains) >= k else float("nan")
    out["after_last_online"] = started + out["wall"] - onlines[-1] if onlines else float("nan")
    within, _ = handoffs(report, [SERVICE], k)
    restarts = in_restart(report)
    out["handoff_p50"], out["handoff_p95"] = (statistics.median(within) if within else float("nan"),
                                              pct(within, 0.95))
    out["restart_p50"], out["restart_p95"] = (statistics.median(restarts) if restarts else float("nan"),
                                              pct(restarts, 0.95))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="50,150,500")
    parser.add_argument("--step", type=float, default=1.0, help="seconds of stop+start+health per restart")
    parser.add_argument("--processes", default="2,4,6", help="agent processes per size")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds one rollout may take at most")
    parser.add_argument("--agent-nice", type=int, default=0,
                        help="nice value of the agent processes: above 0 the ZooKeeper server beside them gets the "
                             "CPU first, as on a fleet whose ensemble has machines of its own")
    parser.add_argument("--switch-interval", type=float, default=0.05,
                        help="the agent processes' interpreter switch interval in seconds (Python's own is 0.005): "
                             "each process holds N/processes agents that would each have a machine of their own, "
                             "and at Python's 5 ms their waiting threads' wake-ups take half the machine at the "
                             "start of a rollout (docs/benchmarks.md)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    procs = [int(p) for p in args.processes.split(",")]
    procs += [procs[-1]] * (len(sizes) - len(procs))
    results = []
    with tempfile.TemporaryDirectory(prefix="zkdeploy-scale-") as tmp, ZkCluster() as zk:
        for n, p in zip(sizes, procs, strict=False):
            print(f"N={n}: {p} processes ...", flush=True)
            res = one_size(zk, Path(tmp), n, p, args.step, args.timeout, args.agent_nice, args.switch_interval)
            print(f"N={n}: done in {res['wall']:.1f}s (setup {res.get('setup_seconds', float('nan')):.0f}s), "
                  f"{res['restarted']}/{n} at version 2 {res.get('error', '')}", flush=True)
            results.append(res)

    def row(label: str, fmt: str, key: Any) -> None:
        cells = [fmt.format(key(r)) if callable(key) else fmt.format(r[key]) for r in results]
        print(f"{label:<44}" + "".join(f"{c:>14}" for c in cells))

    print()
    row("N", "{}", "n")
    row("k (down at once), quorum N-k", "{}", "k")
    row("agent processes", "{}", "processes")
    row("their interpreter switch interval ms", "{:g}", lambda r: (r["switch"] or 0.005) * 1000)
    row("ideal seconds (ceil(N/k) x step)", "{:.1f}", "ideal")
    row("measured seconds", "{:.1f}", "wall")
    row("nodes at the new version", "{}", "restarted")
    row("rollout efficiency", "{:.3f}", "efficiency")
    row("machine CPU busy during the rollout", "{:.0%}", "cpu_busy")
    print("per node per rollout (fleet totals / restarts made):")
    row("  zk requests (client count)", "{:.1f}", "requests")
    row("  zk packets (server's count)", "{:.1f}", "server_per_node")
    row("  watch notifications", "{:.1f}", "notifications")
    row("  bytes read", "{:.0f}", "bytes")
    row("  CPU ms of the agent processes", "{:.1f}", lambda r: r["agents_cpu_per_node"] * 1000)
    row("  CPU ms of the ZooKeeper server", "{:.1f}", lambda r: r["zk_cpu_per_node"] * 1000)
    row("  cycles", "{:.1f}", "cycles")
    row("  slot polls", "{:.1f}", "polls")
    row("quorum decision p50 ms (every poll)", "{:.1f}", lambda r: r["poll_p50"] * 1000)
    row("quorum decision p95 ms (every poll)", "{:.1f}", lambda r: r["poll_p95"] * 1000)
    row("quorum decision p95 ms (polls that took it)", "{:.1f}", lambda r: r["granted_p95"] * 1000)
    row("deploy queued -> first drain ms", "{:.0f}", lambda r: r["to_first_drain"] * 1000)
    row("deploy queued -> k-th drain ms (all slots busy)", "{:.0f}", lambda r: r["to_kth_drain"] * 1000)
    row("last node online -> deploy seen done ms", "{:.0f}", lambda r: r["after_last_online"] * 1000)
    row("hand-off p50 ms (a node online -> next drain)", "{:.0f}", lambda r: r["handoff_p50"] * 1000)
    row("hand-off p95 ms", "{:.0f}", lambda r: r["handoff_p95"] * 1000)
    row("one restart p50 ms (drain -> online; step)", "{:.0f}", lambda r: r["restart_p50"] * 1000)
    row("one restart p95 ms", "{:.0f}", lambda r: r["restart_p95"] * 1000)
    row("zkdeploy status ms, idle", "{:.0f}", lambda r: r["status_idle"][0] * 1000)
    row("zkdeploy status ms, mid-rollout", "{:.0f}", lambda r: r["status_mid"][0] * 1000)
    row("zkdeploy status requests", "{}", lambda r: r["status_idle"][1])
    print("\nrequests per node per rollout by kind:")
    for kind in sorted({k for r in results for k in r["kinds"]}):
        print(f"  {kind:<42}" + "".join(f"{r['kinds'].get(kind, 0):>14.1f}" for r in results))
    print("requests per node per rollout by kind and path (the most frequent):")
    for kind in sorted({k for r in results for k in r["paths"]}, key=lambda k: -results[-1]["paths"].get(k, 0)):
        print(f"  {kind:<42}" + "".join(f"{r['paths'].get(kind, 0):>14.1f}" for r in results))
    for r in results:
        if "error" in r:
            print(f"N={r['n']}: {r['error']}; its efficiency is that of the progress made "
                  f"({r['restarted']}/{r['n']} restarted in {args.timeout:g}s), and its counts are for that part")
    last = results[-1]
    print(f"scale_n={last['n']} efficiency={last['efficiency']:.3f} zk_requests_per_node={last['requests']:.1f} "
          f"notifications_per_node={last['notifications']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
