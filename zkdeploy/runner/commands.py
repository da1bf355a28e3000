"""Templated shell commands with timeouts."""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
from collections.abc import Mapping
from typing import Any

from zkdeploy.errors import ServiceError, StepTimeoutError

log = logging.getLogger(__name__)


class _Strict(dict):
    def __missing__(self, key: str) -> Any:
        raise ServiceError(f"template field {{{key}}} is not defined (add it to the agent file's 'vars')")


def render(template: str, fields: Mapping[str, Any], *, quote: bool) -> str:
    """Fill ``{field}`` placeholders; values are shell-quoted when ``quote``."""
    values = {k: shlex.quote(str(v)) if quote else str(v) for k, v in fields.items()}
    try:
        return template.format_map(_Strict(values))
    except (ValueError, IndexError) as exc:
        raise ServiceError(f"bad template {template!r}: {exc}") from None


def run(command: str, *, timeout: float, what: str, env: Mapping[str, str] | None = None,
        cwd: str | None = None) -> str:
    """Run a shell command to completion; returns its output.

    Raises StepTimeoutError (after killing its whole process group) if it runs
    past ``timeout``, ServiceError if it exits non-zero.
    """
    proc = subprocess.Popen(
        ["/bin/sh", "-c", command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True, env={**os.environ, **(env or {})}, cwd=cwd,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        proc.communicate()
        raise StepTimeoutError(f"{what}: `{command}` ran past {timeout:g}s and was killed") from None
    text = out.decode(errors="replace").strip()
    if proc.returncode != 0:
        tail = text[-500:]
        raise ServiceError(f"{what}: `{command}` exited {proc.returncode}" + (f": {tail}" if tail else ""))
    return text


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
