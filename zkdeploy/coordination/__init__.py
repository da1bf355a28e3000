"""Everything that talks to the coordination tree.  Only ``zookeeper.py`` imports kazoo.

``Store`` is the interface the agent and the CLI use; ``Session`` is the seam
under it, implemented for ZooKeeper (``ZooKeeperSession``) and, for tests,
in memory (``zkdeploy.testing.memory.MemorySession``).
"""

from zkdeploy.coordination.layout import Layout
from zkdeploy.coordination.lock import QueueLock
from zkdeploy.coordination.session import CONNECTED, LOST, SUSPENDED, Session
from zkdeploy.coordination.store import Store

__all__ = ["CONNECTED", "LOST", "SUSPENDED", "Layout", "QueueLock", "Session", "Store"]
