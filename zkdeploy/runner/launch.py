"""How a managed service is launched: a child in a session of its own, or in a transient systemd scope.

``direct``: the service is a child of the agent in its own session (and
process group).  Under systemd it stays in the agent's cgroup, which is why
the agent's unit says ``KillMode=process``.

``systemd``: the same process is started through ``systemd-run --scope
--unit=zkdeploy-<service> --slice=<slice> --collect``.  With ``--scope``
systemd-run asks systemd for a new scope unit holding its own process and
then execs the command in place: the pid, stdin (the start gate of
zkdeploy.runner.process), stdout (the log pump) and environment are those
the agent gave it, but the service lives in a cgroup of its own,
``zkdeploy-<service>.scope``, outside the agent's unit.  Stopping,
restarting or upgrading the agent never touches it, whatever the agent's
KillMode; ``systemctl status zkdeploy.slice`` shows every service, and
resource limits are scope properties.  The log pump of each service gets
a scope of its own in the same slice.

What the agent file says (``service_launch``) is resolved once at start by
``resolve``; the agent daemon installs the result with
``zkdeploy.runner.process.configure``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from zkdeploy.errors import ConfigError

log = logging.getLogger(__name__)

DIRECT = "direct"
SYSTEMD = "systemd"
#: how long the probe scope of ``auto`` and ``systemd`` may take
PROBE_TIMEOUT = 15.0

_UNIT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_.")


def unit_escape(name: str) -> str:
    """``name`` as systemd-escape(1) writes a unit name part: ``-`` and other characters as ``\\xNN``."""
    return "".join(c if c in _UNIT_CHARS else f"\\x{ord(c):02x}" for c in name)


def unit_name(service: str) -> str:
    """The scope of ``service``: ``zkdeploy-<service>.scope``."""
    return f"zkdeploy-{unit_escape(service)}.scope"


@dataclass(frozen=True)
class Launch:
    """A resolved launch mode: ``direct``, or ``systemd`` with the systemd-run to use."""

    mode: str = DIRECT
    systemd_run: str = "systemd-run"
    slice: str = "zkdeploy.slice"
    properties: tuple[str, ...] = ()

    def wrap(self, argv: Sequence[str], *, unit: str | None, description: str) -> list[str]:
        """``argv`` as this mode runs it.  ``unit`` names the scope (None: systemd names it)."""
        if self.mode == DIRECT:
            return list(argv)
        head = [self.systemd_run, "--scope", "--quiet", "--collect", "--no-ask-password", f"--slice={self.slice}",
                f"--description={description}"]
        if unit is not None:
            head.append(f"--unit={unit}")
        head += [f"--property={p}" for p in self.properties]
        return [*head, "--", *argv]

    def describe(self) -> str:
        if self.mode == DIRECT:
            return "as children in sessions of their own"
        return f"in transient systemd scopes zkdeploy-<service>.scope under {self.slice}"


def _probe(launch: Launch) -> str | None:
    """Make one throw-away scope; None when it worked, else why not."""
    argv = launch.wrap(["/bin/true"], unit=None, description="zkdeploy: can the agent make scopes?")
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=PROBE_TIMEOUT)
    except subprocess.TimeoutExpired:
        return f"`{' '.join(argv)}` ran past {PROBE_TIMEOUT:g}s"
    except OSError as exc:
        return f"cannot run {launch.systemd_run}: {exc.strerror or exc}"
    if done.returncode != 0:
        return (done.stderr or done.stdout).strip()[-300:] or f"exit {done.returncode}"
    return None


def systemd_is_init(run_dir: str = "/run/systemd/system") -> bool:
    """sd_booted(3): systemd is PID 1 when this directory exists."""
    return os.path.isdir(run_dir)


def resolve(mode: str, *, slice: str = "zkdeploy.slice", properties: Sequence[str] = (),
            environ: Mapping[str, str] | None = None, which: Callable[[str], str | None] = shutil.which,
            booted: Callable[[], bool] = systemd_is_init,
            probe: Callable[[Launch], str | None] = _probe) -> tuple[Launch, str]:
    """The launch mode the agent file's ``service_launch.mode`` means on this machine, and why.

    ``direct`` is taken as it is.  ``systemd`` needs ``systemd-run`` and a probe scope that works,
    else ConfigError (the agent does not start).  ``auto`` is ``systemd`` when systemd is PID 1,
    ``systemd-run`` exists, the agent itself runs in a systemd unit (``$INVOCATION_ID``: an agent
    started by hand, a test or the demo keeps its children) and the probe works; else ``direct``.
    """
    env = os.environ if environ is None else environ
    if mode == DIRECT:
        return Launch(DIRECT), "service_launch.mode is direct"
    path = which("systemd-run")
    candidate = Launch(SYSTEMD, path or "systemd-run", slice, tuple(properties))
    if mode == SYSTEMD:
        if path is None:
            raise ConfigError("service_launch.mode is systemd but systemd-run is not installed")
        why = probe(candidate)
        if why is not None:
            raise ConfigError(f"service_launch.mode is systemd but the agent cannot make a scope: {why} "
                              "(run it as root, grant it org.freedesktop.systemd1.manage-units through polkit, "
                              "or set service_launch.mode: direct)")
        return candidate, "service_launch.mode is systemd"
    if mode != "auto":
        raise ConfigError(f"service_launch.mode {mode!r}: expected auto, systemd or direct")
    if not booted():
        return Launch(DIRECT), "auto: systemd is not PID 1"
    if path is None:
        return Launch(DIRECT), "auto: systemd-run is not installed"
    if not env.get("INVOCATION_ID"):
        return Launch(DIRECT), "auto: the agent was not started by systemd"
    why = probe(candidate)
    if why is not None:
        return Launch(DIRECT), f"auto: the agent cannot make a systemd scope ({why})"
    return candidate, "auto: systemd is PID 1 and the agent can make scopes"
