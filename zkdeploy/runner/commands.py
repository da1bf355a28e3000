"""Templated shell commands, and the one way zkdeploy runs a command with a timeout.

Every bounded command of the agent -- service start/stop commands, hooks,
journal ``command`` actions, command health checks -- goes through
:func:`run_bounded`, so "kill the process group on timeout and never wait
for it" is written once.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from zkdeploy.errors import ServiceError, StepTimeoutError

log = logging.getLogger(__name__)


class _Strict(dict[str, str]):
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
    """Run a shell command to completion; returns its output (stderr merged into stdout).

    Raises StepTimeoutError (after killing its whole process group) if it runs
    past ``timeout``, ServiceError if it cannot start or exits non-zero.
    """
    try:
        done = run_bounded(["/bin/sh", "-c", command], timeout=timeout, what=f"{what}: `{command}`",
                           env=env, cwd=cwd, output=MERGED)
    except OSError as exc:
        raise ServiceError(f"{what}: cannot run `{command}`: {exc.strerror or exc}") from None
    text = done.stdout.decode(errors="replace").strip()
    if done.returncode != 0:
        tail = text[-500:]
        raise ServiceError(f"{what}: `{command}` exited {done.returncode}" + (f": {tail}" if tail else ""))
    return text


# -- the one bounded subprocess runner ----------------------------------------

#: ``output`` of run_bounded: stdout and stderr in two buffers, in one, or not kept at all.
SEPARATE = "separate"
MERGED = "merged"
DISCARD = "discard"

#: After a timed-out command's group is killed, how long to read what is left of its output.
DRAIN_TIMEOUT = 1.0


@dataclass(frozen=True)
class Finished:
    """A command that ended within its timeout: its exit code and what it printed."""

    returncode: int
    stdout: bytes  # with ``MERGED``, stdout and stderr interleaved
    stderr: bytes  # empty unless ``SEPARATE``


def run_bounded(argv: Sequence[str], *, timeout: float, what: str, env: Mapping[str, str] | None = None,
                cwd: str | None = None, output: str = SEPARATE) -> Finished:
    """Run ``argv`` in a new process group with stdin closed; wait at most ``timeout`` seconds.

    Guarantees: the call returns within about ``timeout + 2 * DRAIN_TIMEOUT``
    seconds whatever the command does.  On timeout the whole process group
    is SIGKILLed, what is left of its output is read for at most
    DRAIN_TIMEOUT (a process that left the group with setsid may hold the
    pipes open forever), the pipes are closed, and StepTimeoutError
    "``what`` ran past ``timeout``s and was killed" is raised.  ``env`` is
    added to this process's environment.  Raises OSError when the command
    cannot be started (missing program or cwd); a non-zero exit is not an
    error here, the caller judges the returncode.
    """
    if output not in (SEPARATE, MERGED, DISCARD):
        raise ValueError(f"output must be {SEPARATE!r}, {MERGED!r} or {DISCARD!r}, not {output!r}")
    stdout = subprocess.DEVNULL if output == DISCARD else subprocess.PIPE
    stderr = {SEPARATE: subprocess.PIPE, MERGED: subprocess.STDOUT, DISCARD: subprocess.DEVNULL}[output]
    proc = subprocess.Popen(
        list(argv), stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, start_new_session=True,
        env={**os.environ, **env} if env else None, cwd=cwd,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        _reap_killed(proc, what)
        raise StepTimeoutError(f"{what} ran past {timeout:g}s and was killed") from None
    return Finished(proc.returncode, out or b"", err or b"")


def _reap_killed(proc: subprocess.Popen[bytes], what: str) -> None:
    """Collect a killed command without waiting on anything outside its process group."""
    try:
        proc.communicate(timeout=DRAIN_TIMEOUT)
        return
    except subprocess.TimeoutExpired:
        log.warning("%s: a process outside its process group still holds its output open; "
                    "no longer reading it", what)
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
    try:
        proc.wait(timeout=DRAIN_TIMEOUT)
    except subprocess.TimeoutExpired:
        log.warning("%s: pid %d did not exit after SIGKILL within %gs", what, proc.pid, DRAIN_TIMEOUT)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
