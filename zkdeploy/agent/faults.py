"""A fault-injection hook the tests can arm: ``ZKDEPLOY_CRASH_AT=<service>:<phase>[,...]``.

When the agent reaches that phase of that service it kills itself with
SIGKILL, exactly as a power loss or an OOM kill would.  Unset, it costs one
dictionary lookup.
"""

from __future__ import annotations

import os
import signal

_ARMED = {item.strip() for item in os.environ.get("ZKDEPLOY_CRASH_AT", "").split(",") if item.strip()}


def crash_point(service: str, phase: str) -> None:
    if _ARMED and (f"{service}:{phase}" in _ARMED or f"*:{phase}" in _ARMED):
        os.kill(os.getpid(), signal.SIGKILL)
