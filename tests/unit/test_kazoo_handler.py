"""The ZooKeeper session's kazoo handler: a cheaper wait that answers as kazoo's own does."""

from __future__ import annotations

import os
import resource
import select
import socket

import pytest
from kazoo.handlers.utils import selector_select

from zkdeploy.coordination.zookeeper import Handler


def test_the_handler_reports_the_ready_socket_as_kazoos_selector_does() -> None:
    handler = Handler()
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    with a, b, c, d:
        assert handler.select([a, c], [], [], 0) == ([], [], [])
        b.send(b"x")
        ready = handler.select([a, c], [], [], 1.0)
        assert ready == selector_select([a, c], [], [], 1.0)
        assert ready[0] == [a]
        writable = handler.select([], [a], [], 0)[1]
        assert writable == [a]


def test_a_descriptor_above_fd_setsize_goes_kazoos_way() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"the hard limit on open files ({hard}) allows no descriptor above 1024")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    a, b = socket.socketpair()
    high = os.dup2(a.fileno(), 1100)
    try:
        b.send(b"x")
        with pytest.raises(ValueError):
            select.select([high], [], [], 0)  # what the handler falls back from
        assert Handler().select([high], [], [], 1.0)[0] == [high]
    finally:
        os.close(high)
        a.close()
        b.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
