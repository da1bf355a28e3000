"""The journal actions of a restart: start, stop and hooks of a service, as data.

Each action's params carry everything needed to run it again later (the
command, the pid file, the health checks), so an undo recorded by this
version of zkdeploy can be carried out by a later one.  Every action is
idempotent: starting a running service or stopping a stopped one does
nothing, which is what crash recovery relies on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zkdeploy.journal import ActionHandler, Registry, default_registry
from zkdeploy.runner import commands, health
from zkdeploy.runner.process import ManagedProcess

START = "zkdeploy.service_start"
STOP = "zkdeploy.service_stop"
HOOKS = "zkdeploy.hooks"
LB_DRAIN = "zkdeploy.lb_drain"
LB_READY = "zkdeploy.lb_ready"


def _process(params: dict[str, Any]) -> ManagedProcess:
    return ManagedProcess(Path(params["pidfile"]), Path(params["logfile"]))


class StartHandler(ActionHandler):
    """Start a service from its ``current`` link; with ``checks``, wait until healthy."""

    kind = START

    def describe(self, params: dict[str, Any]) -> str:
        return f"start {params['service']} {params.get('version') or ''}: {params['command']}".strip()

    def execute(self, params: dict[str, Any], noaction: bool) -> Any:
        if noaction:
            return None
        env = dict(params.get("env") or {})
        if params["managed"]:
            process = _process(params)
            if not process.running():
                process.start(params["command"], cwd=str(Path(params["cwd"]).resolve()), env=env)
        else:
            commands.run(params["command"], timeout=params["timeout"], what=f"start {params['service']}", env=env)
        checks = [health.Check(**c) for c in params.get("checks") or []]
        if checks:
            health.wait_healthy(checks)
        return None

    def manual_steps(self, params: dict[str, Any]) -> list[str]:
        if params["managed"]:
            return [f"cd {params['cwd']} && setsid {params['command']} >>{params['logfile']} 2>&1 &"]
        return [params["command"]]


class StopHandler(ActionHandler):
    """Stop a service: its stop command if it has one, then its managed process."""

    kind = STOP

    def describe(self, params: dict[str, Any]) -> str:
        return f"stop {params['service']} {params.get('version') or ''}".strip()

    def execute(self, params: dict[str, Any], noaction: bool) -> Any:
        if noaction:
            return None
        if params.get("command"):
            commands.run(params["command"], timeout=params["timeout"], what=f"stop {params['service']}",
                         env=dict(params.get("env") or {}))
        if params["managed"]:
            _process(params).stop(params["timeout"])
        return None

    def manual_steps(self, params: dict[str, Any]) -> list[str]:
        steps = [params["command"]] if params.get("command") else []
        if params["managed"]:
            steps.append("kill -TERM -$(python3 -c 'import json;print(json.load(open("
                         f"\"{params['pidfile']}\"))[\"pid\"])')")
        return steps


class HooksHandler(ActionHandler):
    """Run a service's hook commands (drain or undrain) in order."""

    kind = HOOKS

    def describe(self, params: dict[str, Any]) -> str:
        return f"{params['hook']} hooks of {params['service']}: " + ("; ".join(params["commands"]) or "(none)")

    def execute(self, params: dict[str, Any], noaction: bool) -> Any:
        if noaction:
            return None
        for command in params["commands"]:
            commands.run(command, timeout=params["timeout"], what=f"{params['hook']} hook of {params['service']}",
                         env=dict(params.get("env") or {}))
        return None

    def manual_steps(self, params: dict[str, Any]) -> list[str]:
        return list(params["commands"])


class LoadBalancerHandler(ActionHandler):
    """Drain a node from its load balancer, or put it back (zkdeploy.agent.lbcheck): the agent's
    agent-check answer changes, then the balancer's own view is awaited (bounded by a timeout)."""

    kind = LB_DRAIN

    def describe(self, params: dict[str, Any]) -> str:
        return f"load balancer: {params['state']} {params['backend']}/{params['server']} ({params['service']})"

    def execute(self, params: dict[str, Any], noaction: bool) -> Any:
        if noaction:
            return None
        from zkdeploy.agent import lbcheck  # the agent's module; imported here to keep this one light

        return lbcheck.apply(params)

    def manual_steps(self, params: dict[str, Any]) -> list[str]:
        steps = [f"echo {params['state']} > {params['dir']}/{params['service']}"]
        if params.get("socket"):
            steps.append(f"echo 'set server {params['backend']}/{params['server']} state {params['state']}' "
                         f"| socat stdio {params['socket']}")
        return steps


class LoadBalancerReadyHandler(LoadBalancerHandler):
    kind = LB_READY


def agent_registry() -> Registry:
    """The journal's default actions plus the agent's service actions."""
    registry = default_registry()
    for handler in (StartHandler(), StopHandler(), HooksHandler(), LoadBalancerHandler(),
                    LoadBalancerReadyHandler()):
        registry.register(handler, replace=True)
    return registry
