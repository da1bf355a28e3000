"""Faults on purpose, for tests and chaos runs: expire a session the way a partition would."""

from __future__ import annotations

from kazoo.client import KazooClient

from zkdeploy.coordination.client import Connection


def expire_session(conn: Connection, timeout: float = 10.0) -> None:
    """Make ZooKeeper expire ``conn``'s session now (every ephemeral node of it goes).

    Done as kazoo's test harness does: a second client joins the same session
    and closes it.  ``conn`` then sees its session lost and reconnects with a
    new one.
    """
    client_id = conn.client.client_id
    if client_id is None:
        return
    twin = KazooClient(hosts=conn.hosts, client_id=client_id, timeout=conn.client._session_timeout / 1000)
    twin.start(timeout=timeout)
    twin.stop()
    twin.close()
