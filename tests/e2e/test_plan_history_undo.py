"""Fleet-wide dry runs, the central history and undo through ZooKeeper, with agents as processes."""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import tree_digest, two_services, wait_for
from zkdeploy.demo.scenario import wait_deploys
from zkdeploy.journal import Journal

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(240)
def test_plan_matches_the_deploy_history_records_it_and_undo_reverts_it(make_fleet):
    harness = make_fleet(two_services(db_quorum=2, web_quorum=2), size=4)
    harness.install("1")
    fleet, store = harness.fleet, harness.store
    harness.stage("db", "2")
    wait_for(lambda: len(store.holders("db", "2")) == 4, 60, "every agent to prefetch db 2")
    before = {h.name: tree_digest(h.root / "data") for h in fleet.hosts}

    result = fleet.cli("plan", "db@2", "--json")
    planned = json.loads(result.stdout)
    assert planned["missing"] == [] and set(planned["answers"]) == {h.name for h in fleet.hosts}
    # the dry run changed nothing on any host, and queued nothing
    assert {h.name: tree_digest(h.root / "data") for h in fleet.hosts} == before
    assert not any(d.is_open for d in store.deploys())
    text = fleet.cli("plan", "db@2").stdout
    assert "db: 1 -> 2" in text and "stop db 1" in text

    name = harness.deploy("db@2")[0]
    wait_deploys(store, [name], 120)
    for host in fleet.hosts:
        plan = planned["answers"][host.name]["services"][0]
        with Journal.open(host.root / "data" / "state" / "journal.db", create=False) as journal:
            change = next(c for c in journal.list_changes() if c.description == "db 1 -> 2")
        # no more and no fewer: the live change set is exactly the planned list
        assert [t.execute.description for t in change.tasks] == [a["description"] for a in plan["actions"]]
        assert [t.execute.params for t in change.tasks] == [a["params"] for a in plan["actions"]]

    history = json.loads(fleet.cli("history", "--service", "db", "--json").stdout)
    done = [r for r in history if r["description"] == "db 1 -> 2"]
    assert sorted(r["node"] for r in done) == sorted(h.name for h in fleet.hosts)
    assert all(r["status"] == "done" and r["deploy_id"] == name for r in done)

    target = fleet.hosts[0]
    result = fleet.cli("undo", "--node", target.name, "--last", "1", "--force", "--json")
    undone = json.loads(result.stdout)
    assert undone["state"] == "done" and undone["result"][0]["description"] == "db 1 -> 2"
    assert (target.root / "data" / "current" / "db").resolve().name == "1"
    entry = store.current("db")[target.name]
    assert (entry.version, entry.state) == ("1", "online")
    assert any(r["node"] == target.name and r["status"] == "undone"
               for r in json.loads(fleet.cli("history", "--node", target.name, "--json").stdout))


def test_undo_refuses_bad_requests(make_fleet):
    harness = make_fleet(two_services(db_quorum=2, web_quorum=2), size=3, start=False)
    fleet = harness.fleet
    assert fleet.cli("undo", "--node", "nobody", "--last", "1", "--force", check=False).returncode == 2
    assert fleet.cli("undo", "--node", "node01", "--force", check=False).returncode == 2
    result = fleet.cli("history", "--since", "2999-01-01", check=False)
    assert result.returncode == 2 and "in the future" in result.stderr
