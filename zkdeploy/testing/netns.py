"""A lab of network namespaces on one Linux bridge, for scripts/lab_*.py (needs root).

Each "host" is a namespace ``<prefix>-h<i>`` with a veth ``<prefix>-v<i>``
inside (address ``198.18.0.<i>/24``, from the benchmarking range
198.18.0.0/15, no default route) whose peer ``<prefix>-b<i>`` sits on the
bridge ``<prefix>-br``.  The root namespace has no address on the bridge:
only the hosts reach each other.  Optionally every link is shaped with a
tbf qdisc both ways.

Everything a lab makes carries its prefix, so ``cleanup()`` removes what
this run or an earlier, interrupted one left, and nothing else.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

#: every command of the lab is bounded
CMD_TIMEOUT = 30
SUBNET = "198.18.0"


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run one command (bounded); CalledProcessError with its output when it fails and ``check``."""
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=CMD_TIMEOUT)


class NetLab:
    """The namespaces, veths and bridge of one lab, all named after ``prefix``."""

    def __init__(self, prefix: str) -> None:
        if not prefix or len(prefix) > 8 or not prefix.isalnum():
            raise ValueError("the prefix must be 1-8 letters or digits (interface names are short)")
        self.prefix = prefix
        self.bridge = f"{prefix}-br"
        self.hosts: list[int] = []

    def ns(self, i: int) -> str:
        return f"{self.prefix}-h{i}"

    @staticmethod
    def ip(i: int) -> str:
        return f"{SUBNET}.{i}"

    def exec_argv(self, i: int, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside host ``i`` (``ip netns exec`` execs it: the pid is the command's)."""
        return ["ip", "netns", "exec", self.ns(i), *argv]

    def build(self, n: int, rate_mbit: int | None = None) -> None:
        """Hosts 1..n on the bridge; with ``rate_mbit`` each link is shaped both ways."""
        tbf = ["tbf", "rate", f"{rate_mbit}mbit", "burst", "256kb", "latency", "50ms"] if rate_mbit else []
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "link", "set", self.bridge, "up")
        for i in range(1, n + 1):
            inner, outer = f"{self.prefix}-v{i}", f"{self.prefix}-b{i}"
            sh("ip", "netns", "add", self.ns(i))
            self.hosts.append(i)
            sh("ip", "link", "add", inner, "type", "veth", "peer", "name", outer)
            sh("ip", "link", "set", inner, "netns", self.ns(i))
            sh("ip", "link", "set", outer, "master", self.bridge)
            sh("ip", "link", "set", outer, "up")
            sh(*self.exec_argv(i, ["ip", "link", "set", "lo", "up"]))
            sh(*self.exec_argv(i, ["ip", "addr", "add", f"{self.ip(i)}/24", "dev", inner]))
            sh(*self.exec_argv(i, ["ip", "link", "set", inner, "up"]))
            if tbf:
                sh(*self.exec_argv(i, ["tc", "qdisc", "add", "dev", inner, "root", *tbf]))
                sh("tc", "qdisc", "add", "dev", outer, "root", *tbf)

    def leftovers(self) -> list[str]:
        """Namespaces and links of this prefix that exist now."""
        found = []
        for line in sh("ip", "netns", "list", check=False).stdout.splitlines():
            name = line.split()[0] if line.split() else ""
            if name.startswith(self.prefix + "-"):
                found.append(f"netns {name}")
        for line in sh("ip", "-o", "link", "show", check=False).stdout.splitlines():
            name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
            if name.startswith(self.prefix + "-"):
                found.append(f"link {name}")
        return found

    def cleanup(self) -> list[str]:
        """Remove every namespace and link of this prefix (this run's or an earlier one's); what is
        still there afterwards (empty when all went)."""
        for item in self.leftovers():
            kind, name = item.split(" ", 1)
            if kind == "netns":
                sh("ip", "netns", "del", name, check=False)
            else:
                sh("ip", "link", "del", name, check=False)
        self.hosts.clear()
        return self.leftovers()
