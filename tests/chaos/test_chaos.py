"""A short chaos run: a real rollout under injected faults (agents SIGKILLed and SIGSTOPped,
the ZooKeeper leader killed), judged against the invariants of DESIGN.md.

The runner is scripts/chaos.py (imported, not run as a subprocess); the long version is
``scripts/chaos.py --runs 10``.  See docs/chaos.md.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from zkdeploy.testing.zkserver import available

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "chaos.py"


def load_runner():
    spec = importlib.util.spec_from_file_location("zkdeploy_chaos_runner", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


chaos = load_runner()


def pick_seeds(count: int = 3, first: int = 1) -> list[int]:
    """The first seeds whose plans, together, hold a ZooKeeper leader kill and an agent SIGKILL
    (each in its own seed when possible), and one seed whose db@2 fails its health check."""
    wanted = [
        lambda p: any(f.kind == chaos.ZK_LEADER for f in p.faults) and not p.fail_health,
        lambda p: any(f.kind == chaos.KILL for f in p.faults) and not p.fail_health,
        lambda p: p.fail_health,
    ][:count]
    seeds: list[int] = []
    for want in wanted:
        seed = first
        while seed in seeds or not want(chaos.plan_run(seed)):
            seed += 1
        seeds.append(seed)
    return seeds


def test_seed_selection_covers_leader_kill_agent_kill_and_failing_health():
    plans = [chaos.plan_run(s) for s in pick_seeds()]
    kinds = {f.kind for p in plans for f in p.faults}
    assert {chaos.ZK_LEADER, chaos.KILL} <= kinds
    assert any(p.fail_health for p in plans)
    # the plan is a pure function of the seed: a run can be reproduced
    assert chaos.plan_run(plans[0].seed) == plans[0]


@pytest.mark.timeout(300)
def test_short_chaos_run_keeps_every_invariant(capsys, tmp_path):
    reason = available()
    if reason:
        pytest.fail(f"chaos runs need ZooKeeper: {reason}")
    # agents restarted after a kill run the same code as the first ones
    code = chaos.snapshot_code(tmp_path / "code")
    results = []
    for seed in pick_seeds():
        result = chaos.run_once(seed, nodes=6, rollout_timeout=90, converge_timeout=45, code=code,
                                keep=True, base_dir=str(tmp_path))  # a failing run keeps its logs
        results.append(result)
        with capsys.disabled():
            print("\n" + result.line(), flush=True)
    with capsys.disabled():
        print(chaos.summary(results), flush=True)
    injected = {f.kind for r in results for f in r.faults}
    assert {chaos.ZK_LEADER, chaos.KILL} <= injected, injected
    problems = [f"seed {r.seed}: {v}" for r in results for v in r.violations]
    assert problems == [], "\n".join(problems)
