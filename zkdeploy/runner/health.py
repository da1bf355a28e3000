"""Health checks: HTTP (2xx), TCP (connects) and command (exits 0)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from zkdeploy.errors import HealthCheckError


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
    """Run one attempt; None when healthy, else the reason it is not."""
    try:
        if check.kind == "http":
            with urllib.request.urlopen(check.target, timeout=check.timeout) as resp:  # noqa: S310
                if 200 <= resp.status < 300:
                    return None
                return f"HTTP {resp.status}"
        if check.kind == "tcp":
            host, _, port = check.target.rpartition(":")
            with socket.create_connection((host or "127.0.0.1", int(port)), timeout=check.timeout):
                return None
        proc = subprocess.Popen(["/bin/sh", "-c", check.target], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            code = proc.wait(timeout=check.timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            raise
        return None if code == 0 else f"exit {code}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except urllib.error.URLError as exc:
        return str(exc.reason)
    except subprocess.TimeoutExpired:
        return f"timed out after {check.timeout:g}s"
    except (OSError, ValueError) as exc:
        return str(exc) or type(exc).__name__


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
