"""Crashes at every step of a restart, and a rollout that cannot progress, with agents as processes."""

from __future__ import annotations

import json
import os
import signal

import pytest

from tests.e2e.conftest import FAST, wait_for
from zkdeploy.demo.fleet import DemoService
from zkdeploy.demo.scenario import wait_deploys
from zkdeploy.journal import Journal

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(180)
@pytest.mark.parametrize("phase", ["draining", "stopping", "switching", "starting", "checking"])
def test_sigkill_at_each_step_leaves_a_consistent_host(make_fleet, phase):
    harness = make_fleet([DemoService("db", quorum=2, timing=FAST)], size=3)
    harness.install("1")
    victim = harness.fleet.hosts[0]
    harness.arm_crash(victim, f"db:{phase}")
    harness.stage("db", "2")
    names = harness.deploy("db@2")
    wait_for(lambda: victim.process.poll() is not None, 60, f"the agent to die at {phase}")
    assert victim.process.returncode == -signal.SIGKILL
    with Journal.open(victim.root / "data" / "state" / "journal.db", create=False) as journal:
        # the journal says what was in flight: an open change set for the restart
        assert [c.description for c in journal.interrupted_changes()] == ["db 1 -> 2"]
    harness.fleet.start_agent(victim)
    wait_deploys(harness.store, names, 120)
    wait_for(lambda: (e := harness.store.current("db").get(victim.name)) and e.state == "online"
             and e.version == "2", 60, "the victim to end online at 2")
    link = victim.root / "data" / "current" / "db"
    assert os.readlink(link).endswith("db/2")
    with Journal.open(victim.root / "data" / "state" / "journal.db", create=False) as journal:
        assert journal.interrupted_changes() == []
        # the journal matches the disk: the change that last swapped the link points where it points
        swap = journal.blame(link)
        assert swap.execute.params["target"] == os.readlink(link)
        assert journal.get_change(swap.change_id).status in ("done", "failed")


@pytest.mark.timeout(180)
def test_a_rollout_that_cannot_progress_says_why(make_fleet):
    harness = make_fleet([DemoService("db", quorum=2, timing=FAST, progress_deadline=1.0)], size=3)
    harness.install("1")
    fleet = harness.fleet
    fleet.cli("killswitch", "on", "-m", "hold")
    harness.stage("db", "2")
    name = harness.deploy("db@2")[0]
    fleet.kill_agent(fleet.hosts[2], signal.SIGTERM)  # 2 nodes left, quorum 2: nobody may go down
    wait_for(lambda: len(harness.store.current("db")) == 2, 20, "the stopped agent to leave /current")
    fleet.cli("killswitch", "off")
    entry = wait_for(lambda: (d := harness.store.deploy(name)).stalled_since and d, 30, "the deploy to be stalled")
    assert entry.message.startswith("stalled: no progress for")
    assert "waiting for quorum: 2 online" in entry.message and "quorum 2" in entry.message
    status = json.loads(fleet.cli("status", "--json").stdout)
    assert status["services"][0]["waiting_for"].startswith("stalled: no progress for")
    # the third node returns: the rollout goes on and the stall is cleared
    fleet.start_agent(fleet.hosts[2])
    wait_deploys(harness.store, [name], 120)
