"""An observer outside the agents: it probes every service's HTTP port and keeps a timeline.

This is how the demo, the end-to-end tests and the chaos runs judge safety:
by what answers, not by what ZooKeeper says.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field


@dataclass
class Sample:
    at: float
    answers: dict[tuple[str, str], str | None]  # (service, node) -> version answering, None if down


@dataclass
class Observer:
    """Probes ``targets`` ((service, node) -> port) every ``interval`` seconds in a thread."""

    targets: dict[tuple[str, str], int]
    interval: float = 0.05
    timeout: float = 1.0
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def probe(self, port: int) -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=self.timeout) as resp:
                version = json.loads(resp.read().decode()).get("version")
        except (OSError, ValueError):
            return None
        return None if version is None else str(version)

    def sample(self, pool: ThreadPoolExecutor) -> Sample:
        keys = list(self.targets)
        versions = pool.map(lambda k: self.probe(self.targets[k]), keys)
        return Sample(time.time(), dict(zip(keys, versions, strict=True)))

    def _run(self) -> None:
        with ThreadPoolExecutor(max_workers=min(32, len(self.targets) or 1)) as pool:
            while not self._stop.is_set():
                self.samples.append(self.sample(pool))
                self._stop.wait(self.interval)

    def start(self) -> Observer:
        self._thread = threading.Thread(target=self._run, name="observer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)

    # -- what the samples say -------------------------------------------------------
    def nodes(self, service: str) -> list[str]:
        return sorted(n for s, n in self.targets if s == service)

    def min_answering(self, service: str) -> int:
        nodes = self.nodes(service)
        return min((sum(1 for n in nodes if s.answers.get((service, n))) for s in self.samples), default=0)

    def max_down(self, service: str) -> int:
        return len(self.nodes(service)) - self.min_answering(service)

    def first_change(self, service: str, node: str, old: str) -> float | None:
        """When ``node`` of ``service`` first stopped answering ``old`` (down or another version)."""
        for s in self.samples:
            if s.answers.get((service, node)) != old:
                return s.at
        return None

    def first_answer(self, service: str, node: str, version: str) -> float | None:
        for s in self.samples:
            if s.answers.get((service, node)) == version:
                return s.at
        return None

    def final(self, service: str) -> dict[str, str | None]:
        if not self.samples:
            return {}
        last = self.samples[-1]
        return {n: last.answers.get((service, n)) for n in self.nodes(service)}
