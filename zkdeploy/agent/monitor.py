"""The health monitor: keeps /current truthful between restarts.

Every ``interval`` it probes each running service that is not restarting and
flips its published state online <-> failed when the answer changes.  It
also writes again a record whose last write failed (a connection loss), so a
failure is never hidden behind a stale ``online``.  One probe's failure is a failed check,
never the end of the thread.
"""

from __future__ import annotations

import logging
import threading

from zkdeploy.agent.host import Host
from zkdeploy.agent.presence import Presence
from zkdeploy.agent.states import Phase
from zkdeploy.model import FAILED, ONLINE

log = logging.getLogger(__name__)


class HealthMonitor:
    """Probes this node's running services and publishes what they answer."""

    def __init__(self, host: Host, presence: Presence, interval: float, stopping: threading.Event) -> None:
        self.host = host
        self.presence = presence
        self.interval = interval
        self.stopping = stopping

    def run(self) -> None:
        """The thread's loop: one check per interval until the agent stops."""
        while not self.stopping.wait(self.interval):
            try:
                self.check_once()
            except Exception:  # the monitor must outlive any one failure; it is logged with its traceback
                log.exception("health monitor: check failed")

    def check_once(self) -> None:
        """Probe every service that is online or failed and not restarting; publish changes."""
        if not self.presence.registered:
            return
        self.presence.flush()
        for service, svc in self.host.services().items():
            machine = self.presence.machines[service]
            rec = self.presence.local[service]
            if machine.restarting or machine.phase == Phase.HELD or rec.state not in (ONLINE, FAILED):
                continue  # a held node stays failed (out of the load balancer) whatever it answers
            version = rec.version
            reason = self.host.probe(svc, version)
            new = FAILED if reason else ONLINE
            with self.presence.lock:
                # re-check: a restart may have begun while the probe ran
                if machine.restarting or rec.version != version or rec.state not in (ONLINE, FAILED) \
                        or new == rec.state:
                    continue
                log.warning("%s: health monitor: %s -> %s %s", service, rec.state, new, reason or "")
                self.presence.publish(service, state=new, detail=reason or "healthy again")
