"""The rollout every chaos run performs: the fleet's services, the two versions, the timings.

Pure constants and one factory; importing this module starts nothing.
"""

from __future__ import annotations

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


def services() -> list[DemoService]:
    """``db`` (quorum 4) and ``web`` (quorum 67%, depends on ``db``)."""
    return [DemoService("db", quorum=4, timing=TIMING),
            DemoService("web", quorum="67%", depends_on=("db",), timing=TIMING)]
