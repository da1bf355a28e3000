"""Health checks: HTTP (2xx), TCP (connects) and command (exits 0)."""

from __future__ import annotations

import http.client
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from zkdeploy.errors import HealthCheckError, StepTimeoutError
from zkdeploy.runner.commands import DISCARD, run_bounded


@dataclass(frozen=True)
class Check:
    """A health check with its templates already filled in."""

    kind: str  # http | tcp | command
    target: str
    timeout: float
    interval: float
    retries: int

    def describe(self) -> str:
        return f"{self.kind} {self.target}"


def probe(check: Check) -> str | None:
    """Run one attempt; None when healthy, else the reason it is not.

    Guarantee: whatever the target does (refuses, hangs, answers in another
    protocol, closes at once, times out), a failure is returned as a reason
    string and never raised, and the attempt ends within about the check's
    timeout.
    """
    try:
        if check.kind == "http":
            return _probe_http(check)
        if check.kind == "tcp":
            return _probe_tcp(check)
        return _probe_command(check)
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except urllib.error.URLError as exc:
        return str(exc.reason)
    except http.client.HTTPException as exc:
        # not HTTP/1.x (BadStatusLine), a truncated body, an over-long header line...
        return f"bad HTTP answer: {type(exc).__name__}" + (f": {str(exc).strip()[:200]}" if str(exc).strip() else "")
    except StepTimeoutError:
        return f"timed out after {check.timeout:g}s"
    except (OSError, ValueError) as exc:
        return str(exc) or type(exc).__name__


def _probe_http(check: Check) -> str | None:
    with urllib.request.urlopen(check.target, timeout=check.timeout) as resp:
        if 200 <= resp.status < 300:
            return None
        return f"HTTP {resp.status}"


def _probe_tcp(check: Check) -> str | None:
    host, _, port = check.target.rpartition(":")
    with socket.create_connection((host or "127.0.0.1", int(port)), timeout=check.timeout):
        return None


def _probe_command(check: Check) -> str | None:
    done = run_bounded(["/bin/sh", "-c", check.target], timeout=check.timeout, what=check.describe(),
                       output=DISCARD)
    return None if done.returncode == 0 else f"exit {done.returncode}"


def probe_all(checks: Sequence[Check]) -> str | None:
    """One attempt of every check; None when all pass, else the first failure."""
    for check in checks:
        reason = probe(check)
        if reason:
            return f"{check.describe()}: {reason}"
    return None


def wait_healthy(checks: Sequence[Check], should_stop: Callable[[], bool] = lambda: False) -> None:
    """Return once every check passed, each within its own retries; raise HealthCheckError otherwise."""
    for check in checks:
        reason = None
        for attempt in range(check.retries):
            reason = probe(check)
            if reason is None:
                break
            if should_stop():
                raise HealthCheckError(f"{check.describe()}: abandoned (agent stopping): {reason}")
            if attempt + 1 < check.retries:
                time.sleep(check.interval)
        if reason is not None:
            raise HealthCheckError(f"{check.describe()} failed {check.retries} times: {reason}")
