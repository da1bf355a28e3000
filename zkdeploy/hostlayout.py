"""The on-host layout, defined once: every path zkdeploy uses under an agent's data directory.

::

    <data>/state/journal.db                      the change journal (SQLite, WAL)
    <data>/state/agent.lock                      held (flock) by the one agent of this data directory
    <data>/state/held/<service>.json             present while the service is held out (a scenario check
                                                 failed): until its next restart or an operator's undo
    <data>/payloads/<service>/<version>.payload  verified payload (kept for seeding)
    <data>/releases/<service>/<version>/         unpacked release
    <data>/current/<service> -> ../releases/<service>/<version>   the live release (atomic symlink)
    <data>/run/<service>.pid                     the managed process of a service
    <data>/logs/<service>.log                    its output

The host-side counterpart of ``zkdeploy.coordination.layout``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from zkdeploy.names import check_name


@dataclass(frozen=True)
class HostLayout:
    """Paths under one agent's data directory."""

    data_dir: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))

    @property
    def state(self) -> Path:
        return self.data_dir / "state"

    @property
    def journal(self) -> Path:
        return self.state / "journal.db"

    @property
    def lockfile(self) -> Path:
        return self.state / "agent.lock"

    def held(self, service: str) -> Path:
        return self.state / "held" / f"{check_name('service', service)}.json"

    def releases(self, service: str) -> Path:
        return self.data_dir / "releases" / check_name("service", service)

    def release(self, service: str, version: str) -> Path:
        return self.releases(service) / check_name("version", version)

    def payloads(self, service: str) -> Path:
        return self.data_dir / "payloads" / check_name("service", service)

    def payload(self, service: str, version: str) -> Path:
        return self.payloads(service) / (check_name("version", version) + ".payload")

    def current(self, service: str) -> Path:
        return self.data_dir / "current" / check_name("service", service)

    def pidfile(self, service: str) -> Path:
        return self.data_dir / "run" / f"{check_name('service', service)}.pid"

    def logfile(self, service: str) -> Path:
        return self.data_dir / "logs" / f"{check_name('service', service)}.log"
