"""A node's change reports in the central history: appended with one request, pruned now and then."""

from __future__ import annotations

from zkdeploy.coordination import Store
from zkdeploy.testing.counting import CountingSession, Counts
from zkdeploy.testing.memory import MemoryEnsemble, MemorySession


def test_a_report_is_one_create_and_the_oldest_beyond_keep_are_pruned_every_so_often() -> None:
    counts = Counts()
    store = Store(CountingSession(MemorySession(MemoryEnsemble(tick=1.0)).start(), counts).start(), "/dc")
    store.bootstrap()
    store.record_history({"node": "a", "change": 0}, keep=30)  # the first makes the node's parent
    before = counts.snapshot()
    for change in range(1, 200):
        store.record_history({"node": "a", "change": change}, keep=30)
    made = Counts.delta(counts.snapshot(), before)["requests"]
    assert made.get("create") == 199
    assert made.get("children", 0) <= 199 // 25, "its reports are listed to prune them now and then, not each time"
    kept = [r["change"] for r in store.history()]
    assert 30 <= len(kept) <= 30 + 50
    assert kept == list(range(200 - len(kept), 200)), "the newest are kept, in order"
