"""The one crash-injection hook: named points in the code where a test can make zkdeploy die.

Code marks a point with ``crash_point(*parts)``; the point's name is its
parts joined by ``:``.  The points in use:

* the journal: ``begin``, ``end`` (of a change set), ``<position>:before`` and
  ``<position>:after`` (a task), ``undo:<position>:before|after`` (an undo);
* the agent: ``<service>:<phase>`` on entering a restart phase
  (``db:stopping``, ``web:checking``...);
* the runner: ``process:spawned``, between spawning a service and recording
  its pid file.

Two ways to arm it:

* across processes, ``ZKDEPLOY_CRASH_AT`` holds a comma-separated list of
  points, where ``*`` stands for any one part (``*:checking``, ``3:after,end``).
  A process that reaches an armed point SIGKILLs itself, exactly as a power
  loss or an OOM kill would.  The variable is read when a point is reached,
  so it costs one environment lookup when unset.
* in-process, ``install(handler)`` makes every point call ``handler(point)``
  instead (the environment is then ignored).  ``raise_at(spec)`` builds a
  handler that raises :class:`SimulatedCrash` at the armed points, which lets
  model-based tests crash at every step without processes.
"""

from __future__ import annotations

import functools
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: The environment variable that arms crash points in a child process.
CRASH_ENV = "ZKDEPLOY_CRASH_AT"

Handler = Callable[[str], None]
Pattern = tuple[str, ...]

_handler: Handler | None = None


class SimulatedCrash(BaseException):
    """Stands for a SIGKILL in an in-process test.

    A BaseException, so no ``except Exception`` in the code under test can
    swallow it; code that records failures (the journal) lets it pass
    unrecorded, since a killed process records nothing.
    """

    def __init__(self, point: str) -> None:
        super().__init__(f"simulated crash at {point}")
        self.point = point


@functools.lru_cache(maxsize=16)
def parse(spec: str) -> tuple[Pattern, ...]:
    """The points of a comma-separated list, each split into its parts; blanks are ignored."""
    return tuple(tuple(item.strip().split(":")) for item in spec.split(",") if item.strip())


def matches(spec: str, point: str) -> bool:
    """Whether ``point`` is one of ``spec``'s points, ``*`` matching any one part."""
    parts = point.split(":")
    return any(len(pattern) == len(parts) and all(p in ("*", part) for p, part in zip(pattern, parts, strict=True))
               for pattern in parse(spec))


def crash_point(*parts: str) -> None:
    """Mark a crash point named ``":".join(parts)``; see the module docstring for what it does."""
    point = ":".join(parts)
    handler = _handler
    if handler is not None:
        handler(point)
        return
    spec = os.environ.get(CRASH_ENV)
    if spec and matches(spec, point):
        os.kill(os.getpid(), signal.SIGKILL)


def install(handler: Handler | None) -> Handler | None:
    """Call ``handler(point)`` at every crash point from now on (None: back to the environment).

    Returns the handler it replaces.  Process-wide; meant for tests.
    """
    global _handler
    previous, _handler = _handler, handler
    return previous


@contextmanager
def installed(handler: Handler) -> Iterator[None]:
    """``install(handler)`` for the duration of a ``with`` block."""
    previous = install(handler)
    try:
        yield
    finally:
        install(previous)


def raise_at(spec: str) -> Handler:
    """A handler that raises SimulatedCrash at the points of ``spec`` (same syntax as the variable)."""

    def handler(point: str) -> None:
        if matches(spec, point):
            raise SimulatedCrash(point)

    return handler
