"""The agent's cached View: read once, again after a watch fired or after its safety-net refresh."""

from __future__ import annotations

import threading

import pytest

from zkdeploy.agent import view as view_module
from zkdeploy.agent.view import REFRESH, View
from zkdeploy.coordination import Store
from zkdeploy.testing.counting import CountingSession, Counts
from zkdeploy.testing.memory import MemoryEnsemble, MemorySession


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(view_module.time, "monotonic", clock)
    return clock


def views(count: int) -> tuple[list[View], list[Counts]]:
    ensemble = MemoryEnsemble(tick=1.0)
    admin = Store(MemorySession(ensemble).start(), "/dc")
    admin.bootstrap()
    admin.put_catalog({"services": {"app": {"quorum": 1}}}, -1)
    out, counts = [], []
    for i in range(count):
        c = Counts()
        store = Store(CountingSession(MemorySession(ensemble).start(), c).start(), "/dc")
        v = View(store, f"n{i:02d}", ["app"], threading.Event())
        v.start()
        v.catalog()
        out.append(v)
        counts.append(c)
    return out, counts


def test_a_cached_read_is_made_again_only_after_its_watch_fired(clock: Clock) -> None:
    (view,), (counts,) = views(1)
    before = counts.snapshot()
    view.catalog()
    assert Counts.total(Counts.delta(counts.snapshot(), before)) == 0
    _data, version = view.store.catalog()
    view.store.put_catalog({"services": {"app": {"quorum": 2}}}, version)
    assert view.wake.is_set()
    assert view.catalog()[0] == {"services": {"app": {"quorum": 2}}}


def test_every_view_refreshes_within_refresh_seconds_and_a_fleet_started_together_not_all_at_once(
        clock: Clock) -> None:
    fleet, counts = views(40)

    def reread() -> set[int]:
        before = [c.snapshot() for c in counts]
        for v in fleet:
            v.catalog()
        return {i for i, (c, b) in enumerate(zip(counts, before, strict=True))
                if Counts.total(Counts.delta(c.snapshot(), b))}

    moments = []
    for _ in range(25):  # one look every REFRESH / 10, over two and a half periods
        clock.now += REFRESH / 10
        moments.append(reread())
    assert set().union(*moments[:10]) == set(range(40)), "every view refreshed within one period"
    assert max(len(m) for m in moments) < 20, "the refreshes of views started together are spread out"
    assert all(sum(i in m for m in moments) >= 2 for i in range(40)), "and each again one period later"
