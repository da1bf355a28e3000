"""Bounded load through a load balancer: a few clients, each sending one request at a time.

Used by ``zkdeploy demo --lb`` and scripts/bench_zero_downtime.py to count
the requests that fail while a rollout is under way.  A request fails when
it raises (refused, reset, timed out) or answers anything but 200.
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class _Client:
    ok: int = 0
    failed: int = 0
    errors: Counter[str] = field(default_factory=Counter)


class Load:
    """``clients`` threads; client ``i`` sends GET / to ``ports[i % len(ports)]`` on loopback, back to back."""

    def __init__(self, ports: Sequence[int], clients: int = 8, timeout: float = 5.0) -> None:
        if not ports or clients < 1:
            raise ValueError("Load needs at least one port and one client")
        self.ports = list(ports)
        self.timeout = timeout
        self._clients = [_Client() for _ in range(clients)]
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), name=f"load-{i}", daemon=True)
                         for i in range(clients)]

    def _run(self, index: int) -> None:
        client, url = self._clients[index], f"http://127.0.0.1:{self.ports[index % len(self.ports)]}/"
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(url, timeout=self.timeout) as answer:
                    answer.read()
                client.ok += 1
            except (urllib.error.URLError, OSError) as exc:  # HTTPError (a 503 from the balancer) included
                client.failed += 1
                client.errors[str(getattr(exc, "reason", None) or exc)[:80]] += 1

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def ok(self) -> int:
        return sum(c.ok for c in self._clients)

    @property
    def failed(self) -> int:
        return sum(c.failed for c in self._clients)

    @property
    def total(self) -> int:
        return self.ok + self.failed

    def errors(self, top: int = 5) -> list[tuple[str, int]]:
        """The most frequent failures and their counts."""
        total: Counter[str] = Counter()
        for client in self._clients:
            total.update(client.errors)
        return total.most_common(top)
