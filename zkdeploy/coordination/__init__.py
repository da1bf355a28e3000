"""Everything that talks to ZooKeeper.  The only package that imports kazoo."""

from zkdeploy.coordination.client import CONNECTED, LOST, SUSPENDED, Connection
from zkdeploy.coordination.layout import Layout
from zkdeploy.coordination.lock import QueueLock
from zkdeploy.coordination.store import Store

__all__ = ["CONNECTED", "LOST", "SUSPENDED", "Connection", "Layout", "QueueLock", "Store"]
