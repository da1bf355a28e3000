"""The checks of a scenario's steps (zkdeploy.config.scenario), each answered by what really is.

``traffic_blocked`` and ``traffic_flows`` read the balancer's own view
through its runtime API (zkdeploy.lb.runtime), never what the agent asked
for; ``version_answers`` asks the service; ``command`` runs a command.  Each
check is tried ``retries`` times, ``interval`` apart, each attempt bounded by
``timeout``; ``run_check`` returns what it saw when it passes and raises
ScenarioCheckError with the last answer when it does not.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from typing import Any

from zkdeploy.errors import ServiceError, ZkdeployError
from zkdeploy.lb.runtime import server_view
from zkdeploy.runner import commands


class ScenarioCheckError(ServiceError):
    """A scenario step's check failed: the host bails out (stays out of the load balancer) and the deploy halts."""


def check_once(params: dict[str, Any]) -> tuple[bool, str]:
    """One attempt of the check in ``params``: (passed, what was seen)."""
    kind = params["check"]
    timeout = float(params["timeout"])
    if kind == "none":
        return True, "no check"
    if kind in ("traffic_blocked", "traffic_flows"):
        if not params.get("socket"):
            return False, "the service's load_balancer has no runtime 'socket' to read the balancer's view from"
        view = server_view(params["socket"], params["backend"], params["server"], timeout=min(timeout, 10.0))
        if kind == "traffic_blocked":
            return view.drained and view.sessions == 0, f"balancer: {view}"
        return view.serving, f"balancer: {view}"
    if kind == "version_answers":
        try:
            with urllib.request.urlopen(params["url"], timeout=timeout) as answer:
                body = answer.read(4096).decode(errors="replace")
        except (urllib.error.URLError, OSError) as exc:
            return False, f"{params['url']}: {exc}"
        return params["version"] in body, f"{params['url']} answered {body.strip()[:80]!r}"
    if kind == "command":
        output = commands.run(params["check_command"], timeout=timeout, what=f"check of step {params['step']}")
        return True, output[-200:] or "exit 0"
    raise ScenarioCheckError(f"unknown check {kind!r}")


def run_check(params: dict[str, Any]) -> str:
    """The check with its retries; what the passing attempt saw, or ScenarioCheckError."""
    last = ""
    for attempt in range(int(params["retries"])):
        if attempt:
            time.sleep(float(params.get("interval", 1.0)))
        try:
            passed, last = check_once(params)
        except ScenarioCheckError:
            raise
        except ZkdeployError as exc:
            passed, last = False, str(exc)
        if passed:
            return last
    raise ScenarioCheckError(f"step {params['step']!r}: check {params['check']} failed after "
                             f"{params['retries']} attempt(s): {last}")
