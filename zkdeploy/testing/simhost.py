"""Simulated machines behind the agent's ``Host`` seam, for model-based tests and scale benchmarks.

The agent's decision code runs unchanged (its cycle, slots, restarts, journal
and symlink swaps on a real temporary directory); only what a service does is
simulated: starting and stopping are instant, a hook does nothing, and a
release is healthy unless the world marks it bad.  ``SimWorld`` holds what
runs where, so a test can judge the fleet the way an outside observer would,
and calls ``on_step(node, service, step)`` before every step that changes a
service, so a test can check at that instant that the step was allowed.

For benchmarks, ``SimWorld.durations`` can make a stop, a start and the
health check take a fixed time (``{"stop": 0.2, "start": 0.5, "health":
0.3}``; instant when absent), and ``timeline`` records when each step began.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zkdeploy.agent.host import Host
from zkdeploy.agent.host_actions import HOOKS, START, STOP
from zkdeploy.agent.scenario_checks import ScenarioCheckError
from zkdeploy.config.schema import AgentConfig
from zkdeploy.errors import HealthCheckError, PayloadError
from zkdeploy.journal import ActionHandler, ChangeSet
from zkdeploy.model import Release
from zkdeploy.runner.service import HostService


@dataclass
class SimWorld:
    """What runs on every simulated machine.  ``running[(node, service)]`` is the version up, or absent."""

    running: dict[tuple[str, str], str] = field(default_factory=dict)
    bad: set[tuple[str, str]] = field(default_factory=set)  # (service, version) that fail their checks
    on_step: Callable[[str, str, str], None] = lambda node, service, step: None
    pending_start: str | None = None  # the version being started while ``on_step(..., "start")`` runs
    failing_checks: set[tuple[str, str]] = field(default_factory=set)  # (node, scenario step) whose check fails
    steps: list[tuple[str, str, str, str | None]] = field(default_factory=list)
    #: seconds a "stop", a "start" and the "health" check take (absent: instant)
    durations: dict[str, float] = field(default_factory=dict)
    #: (time.time(), node, service, step) when each step began: stop, start, health, or a hook's name
    timeline: list[tuple[float, str, str, str]] = field(default_factory=list)

    def begin(self, node: str, service: str, step: str) -> None:
        """Record that ``step`` begins now, then take its simulated duration."""
        self.timeline.append((time.time(), node, service, step))
        delay = self.durations.get(step, 0.0)
        if delay > 0:
            time.sleep(delay)

    def healthy(self, node: str, service: str) -> bool:
        version = self.running.get((node, service))
        return version is not None and (service, version) not in self.bad

    def up(self, service: str) -> list[str]:
        """The nodes whose ``service`` runs and passes its checks."""
        return sorted(n for (n, s) in self.running if s == service and self.healthy(n, s))


class _SimAction(ActionHandler):
    def __init__(self, kind: str, world: SimWorld, node: str) -> None:
        self.kind = kind  # type: ignore[misc]
        self.world = world
        self.node = node

    def describe(self, params: dict[str, Any]) -> str:
        return f"{self.kind} {params.get('service')} {params.get('version') or params.get('hook') or ''}".strip()

    def execute(self, params: dict[str, Any], noaction: bool) -> Any:
        if noaction:
            return None
        service = params["service"]
        key = (self.node, service)
        if self.kind == STOP:
            self.world.on_step(self.node, service, "stop")
            self.world.begin(self.node, service, "stop")
            self.world.steps.append((self.node, service, "stop", self.world.running.get(key)))
            self.world.running.pop(key, None)
        elif self.kind == START:
            version = params.get("version") or ""
            self.world.pending_start = version
            self.world.on_step(self.node, service, "start")
            self.world.pending_start = None
            self.world.begin(self.node, service, "start")
            self.world.steps.append((self.node, service, "start", version))
            self.world.running[key] = version
            if params.get("checks") and (service, version) in self.world.bad:
                raise HealthCheckError(f"{service}@{version} fails its checks (simulated)")
        else:
            self.world.on_step(self.node, service, params.get("hook", "hook"))
            self.world.begin(self.node, service, params.get("hook", "hook"))
        return None

    def manual_steps(self, params: dict[str, Any]) -> list[str]:
        return [self.describe(params)]


class SimHost(Host):
    """A ``Host`` whose services are simulated in ``world``; journal and releases are real files.
    The journal is not fsynced unless ``durable_journal`` (a benchmark of the real agent's costs)."""

    durable_journal = False

    def __init__(self, config: AgentConfig, world: SimWorld, *, durable_journal: bool = False) -> None:
        super().__init__(config)
        self.world = world
        self.durable_journal = durable_journal
        for kind in (START, STOP, HOOKS):
            self.registry.register(_SimAction(kind, world, self.node), replace=True)

    def change_left_running(self, change: ChangeSet) -> bool:
        return any((self.node, t.execute.params.get("service")) in self.world.running for t in change.tasks)

    def running(self, svc: HostService) -> bool:
        return (self.node, svc.name) in self.world.running

    def probe(self, svc: HostService, version: str | None) -> str | None:
        if not self.running(svc):
            return "process is not running"
        return None if self.world.healthy(self.node, svc.name) else "health check failed (simulated)"

    def scenario_check(self, params: dict[str, Any]) -> str:
        self.world.steps.append((self.node, params.get("service", ""), f"check:{params['step']}", None))
        if (self.node, params["step"]) in self.world.failing_checks:
            raise ScenarioCheckError(f"step {params['step']!r}: check {params['check']} failed (simulated)")
        return "passed (simulated)"

    def wait_healthy(self, svc: HostService, version: str | None) -> None:
        self.world.begin(self.node, svc.name, "health")
        if not self.world.healthy(self.node, svc.name):
            raise HealthCheckError(f"{svc.name}@{version} fails its checks (simulated)")


def tiny_payload(service: str, version: str) -> bytes:
    """A valid release archive of one file, for simulated fetches."""
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        data = f"{service} {version}\n".encode()
        info = tarfile.TarInfo("VERSION")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()  # the same bytes every time: the staged SHA-256 matches every fetch


class SimTransport:
    """A transport that 'fetches' a tiny archive at once (or waits on ``gate`` for a service)."""

    def __init__(self, gates: dict[str, Any] | None = None) -> None:
        self.gates = gates or {}
        self.fetches: list[tuple[str, str]] = []

    def attach(self, store: Any) -> None:
        pass

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def fetch(self, release: Release, dest: Path) -> Path:
        self.fetches.append((release.service, release.version))
        gate = self.gates.get(release.service)
        if gate is not None and not gate.wait(30):
            raise PayloadError(f"{release.service}@{release.version}: simulated download stalled")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(tiny_payload(release.service, release.version))
        return dest

    def reseed(self, release: Release, payload: Path) -> None:
        pass

    def reannounce(self) -> None:
        pass

    def forget(self, release: Release, dest: Path) -> None:
        pass
