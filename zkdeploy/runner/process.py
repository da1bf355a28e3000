"""Managed service processes: started detached, found again through a pid file.

A managed service outlives its agent (an agent crash must not take the
service down), so its process runs in a session of its own and is found
again by a pid file that also records the process start time, which guards
against a recycled pid.

No service runs untracked: the spawned shell waits on a pipe until the pid
file is on disk, and only then execs the service's command.  An agent killed
before that (crash point ``process:spawned``) closes the pipe by dying, and
the shell exits without running anything.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from zkdeploy.crash import crash_point
from zkdeploy.errors import ServiceError, StepTimeoutError
from zkdeploy.fsutil import replace_durably

log = logging.getLogger(__name__)

#: what the agent writes to the gate once the pid file is durable
_GO = b"go\n"
#: the shell's prologue: run the command only after reading "go"; end of file means the agent died first
_GATE = ('read -r zkdeploy_go && [ "$zkdeploy_go" = go ] || '
         '{ echo "zkdeploy: not started: the agent died before it recorded the process" >&2; exit 111; }\n'
         'exec </dev/null\n'
         'exec ')


def _start_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name may contain spaces; fields after the closing paren are fixed
    rest = stat.rsplit(")", 1)[1].split()
    if rest[0] == "Z":
        return None
    return int(rest[19])


class _ExitWaiter:
    """Waits for a process to exit; woken at once through a pidfd where the kernel has them."""

    def __init__(self, pid: int) -> None:
        try:
            self.fd: int | None = os.pidfd_open(pid)
        except (AttributeError, OSError):
            self.fd = None

    def wait(self, seconds: float) -> None:
        if self.fd is None:
            time.sleep(seconds)
        else:
            select.select([self.fd], [], [], seconds)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@dataclass
class ManagedProcess:
    """One service process of this host, tracked by ``pidfile``."""

    pidfile: Path
    logfile: Path

    def _read(self) -> tuple[int, int] | None:
        try:
            data = json.loads(self.pidfile.read_text())
            return int(data["pid"]), int(data["start"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def pid(self) -> int | None:
        """The live process's pid, or None when it is not running."""
        got = self._read()
        if got is None:
            return None
        pid, start = got
        return pid if _start_ticks(pid) == start else None

    def running(self) -> bool:
        return self.pid() is not None

    def start(self, command: str, *, cwd: str, env: dict[str, str]) -> int:
        """Start ``command`` detached; returns its pid.  Raises ServiceError if it is already running.

        Guarantees: the command runs only once the pid file naming its process
        is durably on disk, so whenever the caller dies, the service either
        runs and is found by ``pid``/``stop``, or never ran.
        """
        if self.running():
            raise ServiceError(f"{self.pidfile.stem} is already running (pid {self.pid()})")
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        gate, go = os.pipe()
        try:
            try:
                with open(self.logfile, "ab") as out:
                    proc = subprocess.Popen(
                        ["/bin/sh", "-c", _GATE + command], cwd=cwd, env={**os.environ, **env},
                        stdin=gate, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                    )
            finally:
                os.close(gate)  # the shell holds its own copy
            self._child = proc  # keep the handle so this process reaps it
            crash_point("process", "spawned")
            start = None
            for _ in range(50):
                start = _start_ticks(proc.pid)
                if start is not None:
                    break
                time.sleep(0.01)
            if start is None:
                code = proc.poll()
                raise ServiceError(f"`{command}` exited at once (code {code}); see {self.logfile}")
            self._record(proc.pid, start, command)
            os.write(go, _GO)
        except OSError as exc:
            raise ServiceError(f"cannot start `{command}`: {exc.strerror or exc}") from None
        finally:
            os.close(go)  # without "go" first, the shell reads end of file and exits
        return proc.pid

    def _record(self, pid: int, start: int, command: str) -> None:
        """Write the pid file atomically and durably (an OSError when the disk refuses)."""
        tmp = self.pidfile.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": pid, "start": start, "command": command}))
        replace_durably(tmp, self.pidfile)

    def stop(self, timeout: float) -> bool:
        """SIGTERM the process group, SIGKILL after ``timeout``; True if something was stopped."""
        pid = self.pid()
        if pid is None:
            self.pidfile.unlink(missing_ok=True)
            return False
        waiter = _ExitWaiter(pid)
        try:
            self._signal(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                self._reap()
                if self.pid() is None:
                    self.pidfile.unlink(missing_ok=True)
                    return True
                waiter.wait(min(0.05, max(0.0, deadline - time.monotonic())))
        finally:
            waiter.close()
        log.warning("%s did not stop within %gs; killing it", self.pidfile.stem, timeout)
        self._signal(pid, signal.SIGKILL)
        for _ in range(100):
            self._reap()
            if self.pid() is None:
                self.pidfile.unlink(missing_ok=True)
                return True
            time.sleep(0.05)
        raise StepTimeoutError(f"{self.pidfile.stem} (pid {pid}) survived SIGKILL")

    def _reap(self) -> None:
        child = getattr(self, "_child", None)
        if child is not None:
            child.poll()

    @staticmethod
    def _signal(pid: int, sig: int) -> None:
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError as exc:
            raise ServiceError(f"cannot signal pid {pid}: {exc}") from None
