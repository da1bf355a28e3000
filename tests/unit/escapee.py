"""A shell command whose grandchild escapes its process group and keeps stdout open.

Killing the command's process group on timeout does not reach the grandchild
(it called setsid), so a runner that then reads the pipe to its end waits as
long as the grandchild lives.  ``escaping_command`` yields such a command and
kills the grandchild afterwards; ``call_within`` runs a call in a thread and
fails the test, instead of hanging it, when the call does not return in time.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def escaping_command(tmp_path: Path, seconds: int = 60) -> Iterator[str]:
    """A command that runs ``seconds`` and leaves a grandchild in its own session holding stdout."""
    pidfile = tmp_path / "escapee.pid"
    try:
        yield f"setsid sh -c 'echo $$ > {pidfile}; exec sleep {seconds}' & sleep {seconds}"
    finally:
        deadline = time.monotonic() + 3
        while not (pidfile.exists() and pidfile.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.01)
        if pidfile.exists() and pidfile.read_text().strip():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


def call_within(seconds: float, fn: Callable[[], Any]) -> BaseException | None:
    """Run ``fn`` in a thread; return the exception it raised (None if it returned).

    Fails with AssertionError when ``fn`` is still running after ``seconds``.
    """
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise AssertionError(f"the call was still running after {seconds:g}s")
    return outcome[0]
