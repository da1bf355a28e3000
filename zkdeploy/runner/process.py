"""Managed service processes: started detached, found again through a pid file.

A managed service outlives its agent (an agent crash must not take the
service down), so its process runs in a session of its own and is found
again by a pid file that also records the process start time, which guards
against a recycled pid.

No service runs untracked: the spawned shell waits on a pipe until the pid
file is on disk, and only then execs the service's command.  An agent killed
before that (crash point ``process:spawned``) closes the pipe by dying, and
the shell exits without running anything.

Its output goes through a pipe to a log pump (zkdeploy.runner.logpump) that
rotates ``<data>/logs/<service>.log`` by size; with rotation off, straight to
the file.  How both processes are launched (children in sessions of their
own, or transient systemd scopes) is zkdeploy.runner.launch's business: the
agent installs its settings once with ``configure``.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from zkdeploy.crash import crash_point
from zkdeploy.errors import ServiceError, StepTimeoutError
from zkdeploy.fsutil import replace_durably
from zkdeploy.runner import logpump
from zkdeploy.runner.commands import run_bounded
from zkdeploy.runner.launch import DIRECT, Launch, unit_name

log = logging.getLogger(__name__)

#: how long a log pump may take to open its file before the start fails
PUMP_READY_TIMEOUT = 10.0
#: how long ``systemctl kill`` of a stopped service's scope may take
SYSTEMCTL_TIMEOUT = 15.0


@dataclass(frozen=True)
class RunnerSettings:
    """How managed services are launched and their output kept (the agent file's ``service_launch``
    and ``service_logs``).  ``log_max_bytes`` 0: no rotation, no pump."""

    launch: Launch = field(default_factory=Launch)
    log_max_bytes: int = 10 * 1024 * 1024
    log_keep: int = 5


_settings = RunnerSettings()


def configure(settings: RunnerSettings) -> None:
    """Install the settings every ManagedProcess without settings of its own uses (once, at agent start)."""
    global _settings
    _settings = settings


def current_settings() -> RunnerSettings:
    return _settings

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
    #: None: the settings the agent installed with ``configure``
    settings: RunnerSettings | None = None

    @property
    def service(self) -> str:
        return self.pidfile.stem

    def _settings(self) -> RunnerSettings:
        return self.settings if self.settings is not None else _settings

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
        runs and is found by ``pid``/``stop``, or never ran.  With rotation on,
        its log pump is up (its file open) before the command runs.
        """
        if self.running():
            raise ServiceError(f"{self.service} is already running (pid {self.pid()})")
        settings = self._settings()
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        unit = unit_name(self.service) if settings.launch.mode != DIRECT else None
        argv = settings.launch.wrap(["/bin/sh", "-c", _GATE + command], unit=unit,
                                    description=f"zkdeploy service {self.service}")
        gate, go = os.pipe()
        out = -1
        try:
            try:
                out = self._output(settings)
                proc = subprocess.Popen(
                    argv, cwd=cwd, env={**os.environ, **env},
                    stdin=gate, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                )
            finally:
                os.close(gate)  # the shell holds its own copy
                if out >= 0:
                    os.close(out)  # so does the service: the pump sees end of file when it exits
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
            self._record(proc.pid, start, command, unit)
            try:
                os.write(go, _GO)
            except BrokenPipeError:  # it ended before reading the gate (systemd-run refused the scope)
                self.pidfile.unlink(missing_ok=True)
                try:
                    code = proc.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    code = None
                raise ServiceError(f"`{command}` exited before it started (code {code}); see {self.logfile}") from None
        except OSError as exc:
            raise ServiceError(f"cannot start `{command}`: {exc.strerror or exc}") from None
        finally:
            os.close(go)  # without "go" first, the shell reads end of file and exits
        return proc.pid

    def _output(self, settings: RunnerSettings) -> int:
        """The descriptor the service writes to: the log file itself, or a pipe into its log pump
        (started here, and up once this returns).  The caller closes it once the service has it."""
        if settings.log_max_bytes <= 0:
            return os.open(self.logfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        read, write = os.pipe()
        try:
            argv = settings.launch.wrap(logpump.command(self.logfile, settings.log_max_bytes, settings.log_keep),
                                        unit=None, description=f"zkdeploy log pump of {self.service}")
            pump = subprocess.Popen(argv, stdin=read, stdout=subprocess.PIPE, start_new_session=True, cwd="/")
        except BaseException:
            os.close(write)
            raise
        finally:
            os.close(read)
        self._pump = pump
        assert pump.stdout is not None
        try:
            ready, _, _ = select.select([pump.stdout], [], [], PUMP_READY_TIMEOUT)
            said = pump.stdout.read(len(logpump.READY)) if ready else b""
        finally:
            pump.stdout.close()
        if said != logpump.READY:
            os.close(write)
            code = pump.poll()
            if code is None:
                pump.kill()
            raise ServiceError(f"the log pump of {self.service} did not start"
                               + (f" (exit {code})" if code is not None else f" within {PUMP_READY_TIMEOUT:g}s")
                               + f"; it writes {self.logfile} (see the agent's own log)")
        return write

    def _record(self, pid: int, start: int, command: str, unit: str | None) -> None:
        """Write the pid file atomically and durably (an OSError when the disk refuses)."""
        tmp = self.pidfile.with_suffix(".tmp")
        record: dict[str, object] = {"pid": pid, "start": start, "command": command}
        if unit is not None:
            record["unit"] = unit
        tmp.write_text(json.dumps(record))
        replace_durably(tmp, self.pidfile)

    def stop(self, timeout: float) -> bool:
        """SIGTERM the process group, SIGKILL after ``timeout``; True if something was stopped.

        A service launched in a systemd scope has its scope killed once its process is gone, so
        nothing it left behind outside its process group keeps running (or keeps the scope's name
        taken for the next start)."""
        pid = self.pid()
        if pid is None:
            self.pidfile.unlink(missing_ok=True)
            return False
        unit = self._recorded("unit")
        self._stop_process(pid, timeout)
        self.pidfile.unlink(missing_ok=True)
        if isinstance(unit, str):
            self._end_scope(unit)
        return True

    def _stop_process(self, pid: int, timeout: float) -> None:
        waiter = _ExitWaiter(pid)
        try:
            self._signal(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                self._reap()
                if self.pid() is None:
                    return
                waiter.wait(min(0.05, max(0.0, deadline - time.monotonic())))
        finally:
            waiter.close()
        log.warning("%s did not stop within %gs; killing it", self.service, timeout)
        self._signal(pid, signal.SIGKILL)
        for _ in range(100):
            self._reap()
            if self.pid() is None:
                return
            time.sleep(0.05)
        raise StepTimeoutError(f"{self.service} (pid {pid}) survived SIGKILL")

    def _recorded(self, key: str) -> object:
        try:
            data = json.loads(self.pidfile.read_text())
        except (OSError, ValueError):
            return None
        return data.get(key) if isinstance(data, dict) else None

    def _end_scope(self, unit: str) -> None:
        """SIGKILL what is left in ``unit`` (the service's own process is gone); a scope that is
        already gone is fine, any other failure is logged (the service itself did stop)."""
        try:
            done = run_bounded(["systemctl", "kill", "--signal=SIGKILL", unit], timeout=SYSTEMCTL_TIMEOUT,
                               what=f"systemctl kill {unit}")
        except (OSError, StepTimeoutError) as exc:
            log.warning("%s stopped, but its scope %s was not cleaned up: %s", self.service, unit, exc)
            return
        err = done.stderr.decode(errors="replace").strip()
        if done.returncode != 0 and "not loaded" not in err and "not found" not in err:
            log.warning("%s stopped, but `systemctl kill %s` said: %s", self.service, unit, err or done.returncode)

    def _reap(self) -> None:
        for name in ("_child", "_pump"):
            child = getattr(self, name, None)
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
