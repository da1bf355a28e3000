"""Pruning old releases on a (simulated) host: every removal is in the journal, and a crash in the
middle of one leaves a host that restarts cleanly with no half-deleted release."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from zkdeploy.crash import SimulatedCrash
from zkdeploy.journal import render_change, render_changes
from zkdeploy.testing.simfleet import SimFleet

CATALOG = {"services": {"web": {"quorum": 1, "start": "run web", "keep_releases": 1}}}


@pytest.fixture
def fleet() -> Iterator[SimFleet]:
    fleet = SimFleet(["n1"], CATALOG)
    fleet.stage("web", "1", at=1.0)
    fleet.install("n1", "web", "1")
    fleet.start_all()
    fleet.rounds(1)
    yield fleet
    fleet.close()


def _agent(fleet: SimFleet):
    agent = fleet.agents["n1"].agent
    assert agent is not None and agent.payloads is not None
    return agent


def test_a_prune_is_recorded_in_the_journal_with_what_it_removed(fleet: SimFleet) -> None:
    agent = _agent(fleet)
    rel = agent.host.releases["web"]
    for version in ("2", "3"):
        fleet.stage("web", version, at=float(version))
        agent.payloads.want("web", [version])  # installs at once (not threaded), then prunes
    # keep_releases 1, plus the running release (1) and the one wanted (3): 2 goes
    assert rel.installed() == ["1", "3"]
    assert not rel.payload_path("2").exists()
    prunes = [c for c in agent.host.journal.list_changes() if "remove old release" in c.description]
    assert len(prunes) == 1
    change = prunes[0]
    assert change.status == "done"
    assert change.description == "web: remove old release 2 (keep_releases 1)"
    assert [t.execute.description for t in change.tasks] == ["remove release web 2 and its payload"]
    assert "fetched again" in change.tasks[0].undo.description
    # what `zkdeploy journal list` / `journal show` print
    assert "web: remove old release 2 (keep_releases 1)" in render_changes(agent.host.journal.list_changes())
    shown = render_change(change)
    assert "remove release web 2 and its payload" in shown and "fetched again" in shown


def test_a_crash_mid_prune_restarts_cleanly_without_the_half_removed_release(
        fleet: SimFleet, monkeypatch: pytest.MonkeyPatch) -> None:
    agent = _agent(fleet)
    fleet.stage("web", "2", at=2.0)
    agent.payloads.want("web", ["2"])
    fleet.stage("web", "3", at=3.0)
    real_rmtree = shutil.rmtree

    def dies_half_way(path, *args, **kwargs):
        if ".trash-" in str(path):
            for victim in list(Path(path).rglob("*"))[:1]:
                victim.unlink()
            raise SimulatedCrash("rmtree")
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", dies_half_way)
    with pytest.raises(SimulatedCrash):
        agent.payloads.want("web", ["3"])
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    fleet.crash("n1")
    fleet.expire_dead_sessions()
    # the restarted agent settles the interrupted prune at start and carries on
    agent = fleet.start("n1")
    rel = agent.host.releases["web"]
    assert not rel.has("2")
    assert agent.host.journal.interrupted_changes() == []
    fleet.rounds(2)
    assert rel.installed() == ["1", "3"]
    assert fleet.versions("web")["n1"] == "1"
    # the hidden leftover of the interrupted removal goes with the next install
    fleet.stage("web", "4", at=4.0)
    fleet.rounds(2)
    assert sorted(p.name for p in rel.root.iterdir()) == ["1", "4"]
