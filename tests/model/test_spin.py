"""Model checking of the restart protocol (tests/model/protocol.pml) with spin.

Each configuration is verified twice: for safety (assertions: never fewer
than the quorum up through zkdeploy's own actions, no destructive step
without a live slot; and no deadlock) and for liveness (``<> every node runs
the new release and the deploy is marked done`` under weak fairness).  Every
flaw found in the implementation is switched back on by its ``#define`` and
spin must find it: a test that cannot fail proves nothing.

``pytest -s`` prints the figures of every run (states stored, transitions,
depth reached, errors).  docs/protocol.md ("The model") explains the model.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

MODEL = Path(__file__).with_name("protocol.pml")
INSTALL = "apt-get install -y spin gcc"

# Every run here takes a few seconds on 2 cores; these bounds only stop a runaway.
SPIN_TIMEOUT = 60
GCC_TIMEOUT = 120
PAN_TIMEOUT = 120


@dataclass(frozen=True)
class Verification:
    """What one pan run reported."""

    errors: int
    states: int
    transitions: int
    depth: int
    memory_mb: float
    output: str

    def figures(self) -> str:
        return (f"{self.states} states stored, {self.transitions} transitions, "
                f"depth {self.depth}, errors: {self.errors}, {self.memory_mb:.0f} MB")


def _require_tools() -> None:
    missing = [tool for tool in ("spin", "gcc") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not installed; the protocol model needs them: {INSTALL}",
                    pytrace=False)


def _run(cmd: list[str], cwd: Path, timeout: int) -> str:
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(cmd)} ran past {timeout}s", pytrace=False)
    out = done.stdout + done.stderr
    if done.returncode != 0 and cmd[0] != "./pan":
        pytest.fail(f"{' '.join(cmd)} exited {done.returncode}:\n{out}", pytrace=False)
    return out


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match is not None, f"no /{pattern}/ in pan's output:\n{text}"
    return float(match.group(1))


def verify(workdir: Path, defines: list[str], mode: str, label: str) -> Verification:
    """Generate, compile and run the verifier of the model for ``defines``.

    ``mode`` is ``safety`` (assertions and invalid end states, the LTL claim
    left out) or ``liveness`` (the ``live`` claim under weak fairness).
    """
    _require_tools()
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copy(MODEL, workdir / MODEL.name)
    _run(["spin", *defines, "-a", MODEL.name], workdir, SPIN_TIMEOUT)
    if mode == "safety":
        cflags, pan_args = ["-DSAFETY", "-DNOCLAIM"], []
    else:
        cflags, pan_args = ["-DNFAIR=4"], ["-a", "-f", "-N", "live"]
    _run(["gcc", "-O2", "-w", *cflags, "-o", "pan", "pan.c"], workdir, GCC_TIMEOUT)
    out = _run(["./pan", "-m1000000", *pan_args], workdir, PAN_TIMEOUT)
    assert "error: max search depth too small" not in out, out
    result = Verification(
        errors=int(_number(r"errors: (\d+)", out)),
        states=int(_number(r"([\d.e+]+) states, stored", out)),
        transitions=int(_number(r"([\d.e+]+) transitions", out)),
        depth=int(_number(r"depth reached (\d+)", out)),
        memory_mb=_number(r"([\d.]+)\s+total actual memory usage", out),
        output=out,
    )
    print(f"\n[spin] {label} {mode} ({' '.join(defines)}): {result.figures()}")
    return result


# The protocol with the fixes of docs/protocol.md, with faults: session
# expiries (MAXEXP), lost replies (MAXLOST) and crashes zkdeploy did not cause (MAXCRASH).
CONFIGS = {
    "n3-quorum2-one-down": ["-DN=3", "-DQUORUM=2", "-DMAXEXP=2", "-DMAXLOST=2", "-DMAXCRASH=1"],
    "n3-quorum1-two-down": ["-DN=3", "-DQUORUM=1", "-DMAXEXP=1", "-DMAXLOST=1", "-DMAXCRASH=1"],
    "n4-quorum2-two-down": ["-DN=4", "-DQUORUM=2", "-DMAXEXP=2", "-DMAXLOST=1", "-DMAXCRASH=0"],
    "n3-pct50-of-members": ["-DN=3", "-DPCT=50", "-DMAXEXP=1", "-DMAXLOST=1", "-DMAXCRASH=1"],
}


@pytest.mark.parametrize("name", CONFIGS)
def test_protocol_is_safe(name: str, tmp_path: Path) -> None:
    result = verify(tmp_path, CONFIGS[name], "safety", name)
    assert "Full statespace search" in result.output
    assert result.errors == 0, result.output
    assert result.states > 1000  # the faults and interleavings were explored, not a trivial run


@pytest.mark.parametrize("name", CONFIGS)
def test_every_node_restarts_and_the_deploy_completes(name: str, tmp_path: Path) -> None:
    result = verify(tmp_path, CONFIGS[name], "liveness", name)
    assert "acceptance   cycles \t+ (fairness enabled)" in result.output
    assert result.errors == 0, result.output


# A misused operator credential (or a bug of the queue) deletes the head's queue node (docs/security.md): the next
# waiter decides on the same count while the head may still take its slot; the epoch keeps it safe.
ATTACKS = {
    "n3-quorum2-two-queue-nodes-stolen": ["-DN=3", "-DQUORUM=2", "-DSTEAL=2", "-DMAXEXP=1", "-DMAXLOST=1",
                                          "-DMAXCRASH=0"],
    "n3-quorum2-queue-node-stolen-and-a-crash": ["-DN=3", "-DQUORUM=2", "-DSTEAL=1", "-DMAXEXP=1", "-DMAXLOST=1",
                                                 "-DMAXCRASH=1"],
}


@pytest.mark.parametrize("name", ATTACKS)
def test_a_stolen_queue_node_cannot_take_the_service_below_its_quorum(name: str, tmp_path: Path) -> None:
    result = verify(tmp_path, ATTACKS[name], "safety", name)
    assert "Full statespace search" in result.output
    assert result.errors == 0, result.output
    assert result.states > 1000


SAFE_ASSERTION = "assertion violated ((((up[0]"
SLOT_ASSERTION = "assertion violated (alive[i]&&slot[i])"

# The implementation's flaws, each switched back on: (defines, mode, what spin must report).
FLAWS = {
    # (1) a lost reply to the queue create: a ghost node heads the queue for ever
    "ghost-queue-node-deadlocks": (["-DGHOST_QUEUE_NODE"], "safety", "invalid end state"),
    "ghost-queue-node-starves": (["-DGHOST_QUEUE_NODE"], "liveness", "acceptance cycle"),
    # (1b) leaving the queue gives up on a connection loss: the same ghost
    "ghost-on-leave-deadlocks": (["-DGHOST_ON_LEAVE"], "safety", "invalid end state"),
    # (2) a lost reply to the slot transaction: the slot stays, every later take fails
    "ghost-slot-livelocks": (["-DGHOST_SLOT"], "liveness", "acceptance cycle"),
    # (3) a percentage of the nodes present shrinks when a restarting node's session expires
    "present-quorum-goes-below": (["-DPCT=50", "-DPRESENT_QUORUM"], "safety", SAFE_ASSERTION),
    # (4) fenced before the blocking /current write, not right before the stop
    "fence-before-write-stops-without-slot": (["-DFENCE_BEFORE_WRITE"], "safety", SLOT_ASSERTION),
    # (5) "not online: costs no quorum" read from a stale /current entry of its own
    "stale-self-state-goes-below": (["-DMAXCRASH=1", "-DSTALE_SELF_STATE"], "safety", SAFE_ASSERTION),
    # (6) the slot transaction not conditional on the availability epoch: a stolen queue node lets
    # two nodes decide on the same count and both go down
    "stolen-queue-node-without-epoch-goes-below": (["-DSTEAL=1", "-DNO_EPOCH"], "safety", SAFE_ASSERTION),
}


@pytest.mark.parametrize("name", FLAWS)
def test_spin_finds_the_flaw_when_it_is_switched_on(name: str, tmp_path: Path) -> None:
    defines, mode, expected = FLAWS[name]
    result = verify(tmp_path, defines, mode, name)
    assert result.errors >= 1, f"spin found no violation with {defines}:\n{result.output}"
    assert expected in result.output, result.output
    trail = tmp_path / (MODEL.name + ".trail")
    assert trail.exists(), "pan wrote no counterexample trail"
