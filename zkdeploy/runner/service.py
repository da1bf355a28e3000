"""One service on this host: its commands, process and health checks, templated for this node.

HostService only describes and observes a service.  Starting, stopping and
the hooks are journal actions (zkdeploy.agent.host_actions), built from
``start_params`` / ``stop_params`` / ``hook_params``, so every change to a
service is in the journal with its undo before it is made.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zkdeploy.config.schema import ServiceSpec
from zkdeploy.errors import ServiceError
from zkdeploy.runner import commands, health
from zkdeploy.runner.process import ManagedProcess


@dataclass
class HostService:
    """A catalog service bound to this node's name, data directory and vars."""

    name: str
    spec: ServiceSpec
    node: str
    data_dir: Path
    vars: dict[str, Any]

    @property
    def current_link(self) -> Path:
        return self.data_dir / "current" / self.name

    @property
    def process(self) -> ManagedProcess:
        return ManagedProcess(self.data_dir / "run" / f"{self.name}.pid",
                              self.data_dir / "logs" / f"{self.name}.log")

    def fields(self, version: str | None, release: Path | None = None) -> dict[str, Any]:
        return {
            **self.vars,
            "service": self.name,
            "node": self.node,
            "data": str(self.data_dir),
            "version": version or "",
            "release": str(release if release is not None else self.current_link),
        }

    def _env(self, version: str | None, release: Path | None) -> dict[str, str]:
        return {
            "ZKDEPLOY_SERVICE": self.name,
            "ZKDEPLOY_NODE": self.node,
            "ZKDEPLOY_VERSION": version or "",
            "ZKDEPLOY_RELEASE": str(release or self.current_link),
        }

    def command(self, template: str, version: str | None, release: Path | None = None) -> str:
        return commands.render(template, self.fields(version, release), quote=True)

    def checks(self, version: str | None) -> list[health.Check]:
        fields = self.fields(version)
        out = []
        for hc in self.spec.health_checks:
            target = commands.render(hc.target, fields, quote=hc.kind == "command")
            out.append(health.Check(hc.kind, target, hc.timeout, hc.interval, hc.retries))
        return out

    # -- journal action params (see zkdeploy.agent.host_actions) ----------
    def start_params(self, version: str | None, *, wait_healthy: bool) -> dict[str, Any]:
        checks = [vars(c) for c in self.checks(version)] if wait_healthy else []
        return {"service": self.name, "version": version, "managed": self.spec.managed,
                "command": self.command(self.spec.start, version), "cwd": str(self.current_link),
                "pidfile": str(self.process.pidfile), "logfile": str(self.process.logfile),
                "env": self._env(version, None), "timeout": self.spec.start_timeout, "checks": checks}

    def stop_params(self, version: str | None) -> dict[str, Any]:
        return {"service": self.name, "version": version, "managed": self.spec.managed,
                "command": self.command(self.spec.stop, version) if self.spec.stop else None,
                "pidfile": str(self.process.pidfile), "logfile": str(self.process.logfile),
                "env": self._env(version, None), "timeout": self.spec.stop_timeout}

    def hook_params(self, hook: str, version: str | None) -> dict[str, Any]:
        return {"service": self.name, "hook": hook, "timeout": self.spec.hook_timeout,
                "commands": [self.command(t, version) for t in getattr(self.spec, hook)],
                "env": self._env(version, None)}

    # -- observation ----------------------------------------------------
    def running(self) -> bool:
        """Whether the service is up as far as the host can tell (process or health)."""
        if self.spec.managed:
            return self.process.running()
        return self.probe(None) is None

    def wait_healthy(self, version: str | None, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Return once the service passed its health checks and (if managed) still runs; else raise."""
        checks = self.checks(version)
        if not checks and self.spec.managed and not self.process.running():
            raise ServiceError(f"{self.name} exited right after it started; see {self.process.logfile}")
        health.wait_healthy(checks, should_stop)
        if self.spec.managed and not self.process.running():
            raise ServiceError(f"{self.name} is not running after its health checks; see {self.process.logfile}")

    def probe(self, version: str | None) -> str | None:
        """One quick health probe: None when healthy, else why not."""
        if self.spec.managed and not self.process.running():
            return "process is not running"
        return health.probe_all(self.checks(version))
