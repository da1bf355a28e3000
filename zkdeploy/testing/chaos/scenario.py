"""The rollouts a chaos run can perform: the fleet's services, the two versions, the timings.

Pure constants and factories; importing this module starts nothing.  A run picks a
:class:`Scenario` by name (``--scenario``): ``basic`` (``db``, and ``web`` depending on it) or
``chain`` (``db`` <- ``app`` <- ``web``, every quorum a percentage of the fleet).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from zkdeploy.demo.fleet import DemoService, ServiceTiming

#: the agents' ZooKeeper session timeout (seconds); ``stop-long``/``stop-short`` are drawn around it
SESSION_TIMEOUT = 4.0
#: a 1 s start and a 0.5 s stop make a rollout last long enough (about 20-25 s) to be hit
TIMING = ServiceTiming(start_delay=1.0, stop_delay=0.5)
#: the fleet's root in ZooKeeper
ROOT = "/chaos"
#: installed before the faults start / rolled out under the faults
OLD, NEW = "1", "2"
#: the smallest fleet that keeps db's quorum (4) with two hosts under a fault
MIN_NODES = 6
#: the service whose version NEW fails its health check in a failing-health run
FAILING_SERVICE = "db"


def services() -> list[DemoService]:
    """``db`` (quorum 4) and ``web`` (quorum 67%, depends on ``db``)."""
    return [DemoService("db", quorum=4, timing=TIMING),
            DemoService("web", quorum="67%", depends_on=("db",), timing=TIMING)]


def chain_services() -> list[DemoService]:
    """``db`` (67%) <- ``app`` (50%) <- ``web`` (67%): three services in a chain, percentage quorums."""
    return [DemoService("db", quorum="67%", timing=TIMING),
            DemoService("app", quorum="50%", depends_on=("db",), timing=TIMING),
            DemoService("web", quorum="67%", depends_on=("app",), timing=TIMING)]


@dataclass(frozen=True)
class Scenario:
    """A rollout under test: its services, listed in dependency order (each after what it needs)."""

    name: str
    make_services: Callable[[], list[DemoService]]

    def services(self) -> list[DemoService]:
        return self.make_services()

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.make_services()]

    def depends_on(self, service: str) -> tuple[str, ...]:
        return next(s.depends_on for s in self.make_services() if s.name == service)


SCENARIOS = {"basic": Scenario("basic", services), "chain": Scenario("chain", chain_services)}
DEFAULT_SCENARIO = "basic"
