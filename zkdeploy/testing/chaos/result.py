"""What a chaos run reports: the faults as they happened, the violations, and the run's one line."""

from __future__ import annotations

from dataclasses import dataclass, field

from zkdeploy.testing.chaos.plan import is_host_fault


@dataclass
class FaultRecord:
    """One fault as carried out, with the wall times the judge needs."""

    kind: str
    target: str             # host name, or "zk:<port>" for a ZooKeeper server
    started: float          # wall time of the signal
    resumed: float | None = None  # wall time of the restart / SIGCONT (None: never)
    hold: float = 0.0
    detail: str = ""
    service: str = ""       # the service a health fault (or an operator's command) was about

    @property
    def host_fault(self) -> bool:
        return is_host_fault(self.kind)

    def short(self, t0: float) -> str:
        held = f"{self.resumed - self.started:.1f}s" if self.resumed else "never resumed"
        extra = f" ({self.detail})" if self.detail else ""
        return f"{self.kind}:{self.target}@+{self.started - t0:.1f}s/{held}{extra}"


@dataclass
class Violation:
    invariant: str
    reason: str

    def __str__(self) -> str:
        return f"{self.invariant}: {self.reason}"


@dataclass
class RunResult:
    seed: int
    fail_health: bool
    scenario: str = "basic"
    faults: list[FaultRecord] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    rollout_seconds: float | None = None
    converge_seconds: float | None = None
    samples: int = 0
    min_margin: dict[str, int] = field(default_factory=dict)
    max_down: dict[str, int] = field(default_factory=dict)
    deploy_states: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    t0: float = 0.0

    def line(self) -> str:
        """The run's one line: its faults, timings, smallest quorum margins and violations."""
        faults = ", ".join(f.short(self.t0) for f in self.faults) or "none"
        rollout = f"{self.rollout_seconds:.1f}s" if self.rollout_seconds is not None else "unfinished"
        margins = " ".join(f"{s}={m:+d}" for s, m in sorted(self.min_margin.items()))
        converge = f"{self.converge_seconds:.1f}s" if self.converge_seconds is not None else "no"
        scenario = f"scenario={self.scenario} " if self.scenario != "basic" else ""
        out = (f"seed={self.seed} {scenario}db2={'failing-health' if self.fail_health else 'healthy'} "
               f"faults={len(self.faults)} [{faults}] rollout={rollout} converged={converge} samples={self.samples} "
               f"min_quorum_margin[{margins}] violations={len(self.violations)}")
        if self.violations:
            out += " :: " + "; ".join(str(v) for v in self.violations)
        if self.workdir:
            out += f" (kept {self.workdir})"
        return out


def summary(results: list[RunResult]) -> str:
    """The last line of every chaos invocation: ``chaos_runs=N violations=V``."""
    return f"chaos_runs={len(results)} violations={sum(len(r.violations) for r in results)}"
