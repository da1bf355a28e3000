"""A short chaos run: a real rollout under injected faults (agents SIGKILLed and SIGSTOPped, links
to ZooKeeper cut, ZooKeeper servers killed, health endpoints broken, operator commands), judged
against the invariants of DESIGN.md.

The runner is the package zkdeploy.testing.chaos (imported, not run as a subprocess); the long
version is ``scripts/chaos.py --runs 10``.  See docs/chaos.md.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import zkdeploy.testing.chaos as chaos_package
from zkdeploy.testing.chaos import plan as chaos_plan, run as chaos_run
from zkdeploy.testing.chaos.artifacts import snapshot_code
from zkdeploy.testing.chaos.injector import INJECTORS
from zkdeploy.testing.chaos.plan import KILL, ZK_LEADER, plan_run
from zkdeploy.testing.chaos.result import summary
from zkdeploy.testing.zkserver import available

pytestmark = pytest.mark.e2e

PACKAGE_DIR = Path(chaos_package.__file__).resolve().parent


def pick_seeds(count: int = 3, first: int = 1) -> list[int]:
    """The first seeds whose plans, together, hold a ZooKeeper leader kill and an agent SIGKILL
    (each in its own seed when possible), and one seed whose db@2 fails its health check."""
    wanted = [
        lambda p: any(f.kind == ZK_LEADER for f in p.faults) and not p.fail_health,
        lambda p: any(f.kind == KILL for f in p.faults) and not p.fail_health,
        lambda p: p.fail_health,
    ][:count]
    seeds: list[int] = []
    for want in wanted:
        seed = first
        while seed in seeds or not want(plan_run(seed)):
            seed += 1
        seeds.append(seed)
    return seeds


def test_seed_selection_covers_leader_kill_agent_kill_and_failing_health():
    plans = [plan_run(s) for s in pick_seeds()]
    kinds = {f.kind for p in plans for f in p.faults}
    assert {ZK_LEADER, KILL} <= kinds
    assert any(p.fail_health for p in plans)
    # the plan is a pure function of the seed: a run can be reproduced
    assert plan_run(plans[0].seed) == plans[0]


def test_plan_option_prints_each_runs_faults_as_json_with_their_kind(capsys):
    assert chaos_run.main(["--plan", "--runs", "3", "--seed", "7"]) == 0
    lines = capsys.readouterr().out.splitlines()
    plans = [json.loads(line) for line in lines]
    assert [p["seed"] for p in plans] == [7, 8, 9]
    assert all(p["nodes"] == 6 and isinstance(p["fail_health"], bool) for p in plans)
    assert all(p["scenario"] == "basic" for p in plans)
    for p in plans:
        assert 3 <= len(p["faults"]) <= 5
        assert [f["offset"] for f in p["faults"]] == sorted(f["offset"] for f in p["faults"])
        assert {f["kind"] for f in p["faults"]} <= set(chaos_plan.KINDS)
    # what --plan prints is the plan a run of that seed carries out
    assert plans[0] == json.loads(plan_run(7).to_json())


def test_every_drawn_fault_kind_is_registered_and_has_an_injector():
    for kind in chaos_plan.KINDS:
        assert kind in chaos_plan.FAULT_KINDS
        assert kind in INJECTORS, f"no injector for {kind}"
    assert chaos_plan.is_host_fault(KILL) and not chaos_plan.is_host_fault(ZK_LEADER)
    with pytest.raises(ValueError):
        chaos_plan.register_kind(chaos_plan.FAULT_KINDS[KILL])


def test_package_imports_kazoo_only_through_coordination():
    direct = [f"{path.name}:{n}" for path in sorted(PACKAGE_DIR.glob("*.py"))
              for n, line in enumerate(path.read_text().splitlines(), 1)
              if re.match(r"\s*(import|from)\s+kazoo\b", line)]
    assert direct == []


def test_importing_the_package_has_no_side_effects():
    probe = (
        "import logging, signal, sys, threading\n"
        "before = (signal.getsignal(signal.SIGTERM), logging.getLogger('kazoo').level,\n"
        "          logging.getLogger('zkdeploy').level, list(sys.path), threading.active_count())\n"
        "import zkdeploy.testing.chaos.run, zkdeploy.testing.chaos.injector, zkdeploy.testing.chaos.invariants\n"
        "after = (signal.getsignal(signal.SIGTERM), logging.getLogger('kazoo').level,\n"
        "         logging.getLogger('zkdeploy').level, list(sys.path), threading.active_count())\n"
        "print(before == after)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


@pytest.mark.timeout(300)
def test_short_chaos_run_keeps_every_invariant(capsys, tmp_path):
    reason = available()
    if reason:
        pytest.fail(f"chaos runs need ZooKeeper: {reason}")
    # agents restarted after a kill run the same code as the first ones
    code = snapshot_code(tmp_path / "code")
    results = []
    # the failing-health seed runs the chain of three services with percentage quorums
    for seed, scenario in zip(pick_seeds(), ("basic", "basic", "chain"), strict=True):
        result = chaos_run.run_once(seed, nodes=6, rollout_timeout=120, converge_timeout=45, code=code,
                                    keep=True, base_dir=str(tmp_path),  # a failing run keeps its logs
                                    scenario=scenario)
        results.append(result)
        with capsys.disabled():
            print("\n" + result.line(), flush=True)
    with capsys.disabled():
        print(summary(results), flush=True)
    injected = {f.kind for r in results for f in r.faults}
    assert {ZK_LEADER, KILL} <= injected, injected
    problems = [f"seed {r.seed}: {v}" for r in results for v in r.violations]
    assert problems == [], "\n".join(problems)
