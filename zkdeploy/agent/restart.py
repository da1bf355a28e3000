"""One restart of one service on this node, under a slot already held.

The steps of DESIGN.md step 4: drain, stop, switch, start, check, undrain.
Each destructive step is preceded by a fencing check and recorded in the
host's journal with its undo before it is made, so a failure, a lost session
or a failed health check rolls the node back to the release it ran before,
and a crash leaves a journal that says exactly what was done.  Taking the
slot is zkdeploy.agent.slots' job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from zkdeploy.agent.host import Host
from zkdeploy.agent.host_actions import HOOKS, LB_DRAIN, LB_READY, START, STOP
from zkdeploy.agent.lbcheck import lb_params
from zkdeploy.agent.metrics import Metrics
from zkdeploy.agent.releases import ReleaseDir
from zkdeploy.agent.scenario_checks import ScenarioCheckError
from zkdeploy.agent.slots import fence
from zkdeploy.agent.states import Phase, ServiceMachine
from zkdeploy.coordination import Store
from zkdeploy.crash import crash_point
from zkdeploy.errors import HealthCheckError, LockLostError, SessionLostError, ZkdeployError
from zkdeploy.journal import NOTHING_TO_UNDO, ChangeSetBuilder, undo_change
from zkdeploy.runner import commands
from zkdeploy.runner.service import HostService

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """How a restart ended: ``ok`` at ``version``, or rolled back with ``error``."""

    ok: bool
    version: str | None
    error: str = ""
    healthy: bool = True
    change_id: int | None = None
    fenced: bool = False  # interrupted by a lost slot or session: not the release's fault
    held: bool = False    # a scenario check failed: the node is held out as it is (no roll-back)


def restart_tasks(cs: ChangeSetBuilder, svc: HostService, releases: ReleaseDir, old: str | None, target: str,
                  was_running: bool, enter: Callable[..., None] = lambda *a, **k: None,
                  check: Callable[[], None] | None = None) -> None:
    """The tasks of one restart, in order, each with its undo.

    The one code path of a restart: run live under a slot, and in NoAction
    mode (``zkdeploy plan``) to list exactly what the live run would change.
    A service with ``load_balancer:`` in the catalog is drained first (before
    its pre-stop hooks) and put back last (after its post-start hooks).
    ``enter(phase, detail, fenced=True)`` is called before each step.
    """
    drain, ready = lb_params(svc, svc.spec.load_balancer.drain_state if svc.spec.load_balancer else "drain"), \
        lb_params(svc, "ready")
    if was_running:
        lb = drain is not None and ready is not None
        enter(Phase.DRAINING, "load balancer drain, pre-stop hooks" if lb else "pre-stop hooks")
        if drain is not None and ready is not None:
            cs.task(LB_DRAIN, drain, undo=(LB_READY, ready))
        cs.task(HOOKS, svc.hook_params("pre_stop", old), undo=(HOOKS, svc.hook_params("post_start", old)))
        enter(Phase.STOPPING, f"stopping {old}")
        cs.task(STOP, svc.stop_params(old), undo=(START, svc.start_params(old, wait_healthy=True)))
    enter(Phase.SWITCHING, f"switching to {target}")
    cs.swap_symlink(releases.link, releases.link_target(target))
    enter(Phase.STARTING, f"starting {target}")
    cs.task(START, svc.start_params(target, wait_healthy=False), undo=(STOP, svc.stop_params(target)))
    # From here on the new version is up: health checks and undrain only restore service.
    enter(Phase.CHECKING, "health checks", fenced=False)
    if check is not None:
        check()
    cs.task(HOOKS, svc.hook_params("post_start", target), undo=NOTHING_TO_UNDO)
    if drain is not None and ready is not None:
        cs.task(LB_READY, ready, undo=(LB_DRAIN, drain))


def scenario_tasks(cs: ChangeSetBuilder, svc: HostService, releases: ReleaseDir, old: str | None, target: str,
                   was_running: bool, steps: Sequence[dict[str, Any]],
                   enter: Callable[..., None] = lambda *a, **k: None,
                   check: Callable[[dict[str, Any]], None] | None = None) -> None:
    """The tasks of one restart run as a tested scenario (zkdeploy.config.scenario): each step's
    action, journaled with its undo, then its check (``check(step)``; not run in NoAction mode).

    The ``install`` step is the restart's own stop, switch, start and health checks; ``lb_block``
    and ``lb_unblock`` drain and put back the node through the load balancer; ``command`` runs a
    command with its undo.  A check that fails raises ScenarioCheckError and ends the run where it is.
    """
    drain, ready = lb_params(svc, svc.spec.load_balancer.drain_state if svc.spec.load_balancer else "drain"), \
        lb_params(svc, "ready")
    installed = draining = False
    for step in steps:
        what = f"step {step['name']}"
        if step["do"] == "lb_block":
            enter(Phase.DRAINING, f"{what}: block the load balancer")
            draining = True
            if drain is not None and ready is not None:
                cs.task(LB_DRAIN, drain, undo=(LB_READY, ready))
        elif step["do"] == "install":
            if was_running:
                enter(Phase.DRAINING, f"{what}: pre-stop hooks")
                cs.task(HOOKS, svc.hook_params("pre_stop", old), undo=(HOOKS, svc.hook_params("post_start", old)))
                enter(Phase.STOPPING, f"{what}: stopping {old}")
                cs.task(STOP, svc.stop_params(old), undo=(START, svc.start_params(old, wait_healthy=True)))
            elif draining:
                enter(Phase.STOPPING, f"{what}: {old or 'nothing'} is not running")
            enter(Phase.SWITCHING, f"{what}: switching to {target}")
            cs.swap_symlink(releases.link, releases.link_target(target))
            enter(Phase.STARTING, f"{what}: starting {target}")
            cs.task(START, svc.start_params(target, wait_healthy=True), undo=(STOP, svc.stop_params(target)))
            enter(Phase.CHECKING, f"{what}: checking", fenced=False)
            cs.task(HOOKS, svc.hook_params("post_start", target), undo=NOTHING_TO_UNDO)
            installed = True
        elif step["do"] == "command":
            enter(Phase.CHECKING if installed else Phase.DRAINING, f"{what}: {step['command']}", fenced=not installed)
            draining = draining or not installed
            cs.run(svc.command(step["command"], target), undo=svc.command(step["undo"], target) if step.get("undo")
                   else NOTHING_TO_UNDO, timeout=float(step.get("timeout") or 60), description=f"{what}")
        elif step["do"] == "lb_unblock":
            enter(Phase.CHECKING, f"{what}: unblock the load balancer", fenced=False)
            if drain is not None and ready is not None:
                cs.task(LB_READY, ready, undo=(LB_DRAIN, drain))
        if check is not None and step.get("check", "none") != "none":
            check(step)


@dataclass
class Restart:
    """Restart ``svc`` into ``target`` on this node, whose slot of the service is held.

    ``on_failure(error)`` reports a failed release (not a lost slot) before
    the roll-back brings the node back online.
    """

    store: Store
    host: Host
    svc: HostService
    machine: ServiceMachine
    target: str
    deploy_id: str | None = None
    on_failure: Callable[[str], None] | None = None
    free: bool = False  # the slot was granted at no quorum cost (the service did not answer then)
    steps: tuple[dict[str, Any], ...] = ()  # run as a tested scenario (zkdeploy.config.scenario)
    #: each checked step's result, in order (``step``, ``check``, ``ok``, ``seen``): pushed to the history
    step_results: list[dict[str, Any]] = field(default_factory=list)
    metrics: Metrics | None = None  # phase durations: from one ``enter`` to the next, and the last to the end
    _phase: tuple[Phase, float] | None = field(default=None, init=False, repr=False)

    @property
    def service(self) -> str:
        return self.svc.name

    def enter(self, phase: Phase, detail: str, fenced: bool = True) -> None:
        """Move to ``phase`` (published: a blocking write), then, for a destructive step, fence last,
        immediately before the step: a session lost during the write stops the step.

        A slot granted at no cost (the service did not answer) is given back before the service is
        taken down if it answers again by then: going down would now cost quorum."""
        if self.free and phase in (Phase.DRAINING, Phase.STOPPING) and self.host.answers(self.svc):
            raise LockLostError(f"{self.service} answers again: taking it down costs quorum now; deciding again")
        self._timed(phase)
        self.machine.to(phase, detail)
        if fenced:
            fence(self.store, self.service, self.host.node)
        crash_point(self.service, phase.value)

    def _timed(self, phase: Phase | None) -> None:
        """End the phase being timed (into the metrics) and start timing ``phase`` (None: stop)."""
        now = time.monotonic()
        if self._phase is not None and self.metrics is not None:
            self.metrics.phase_done(self._phase[0].value, now - self._phase[1])
        self._phase = (phase, now) if phase is not None else None

    def run(self, old: str | None, was_running: bool) -> Outcome:
        """Every change goes through the journal, recorded with its undo before it is made.
        Leaves the node idle; the caller gives the slot back."""
        try:
            return self._run(old, was_running)
        finally:
            self._timed(None)

    def _run(self, old: str | None, was_running: bool) -> Outcome:
        releases = self.host.releases[self.service]
        change_id: int | None = None
        with self.host.changing:
            try:
                releases.link.parent.mkdir(parents=True, exist_ok=True)
                with self.host.executor.change_set(f"{self.service} {old or '-'} -> {self.target}",
                                                   deploy_id=self.deploy_id) as cs:
                    change_id = cs.id
                    if self.steps:
                        scenario_tasks(cs, self.svc, releases, old, self.target, was_running, self.steps,
                                       self.enter, check=self._check_step)
                    else:
                        restart_tasks(cs, self.svc, releases, old, self.target, was_running, self.enter,
                                      check=lambda: self.host.wait_healthy(self.svc, self.target))
            except ScenarioCheckError as exc:
                return self._hold(exc, change_id)
            except (ZkdeployError, OSError) as exc:
                return self._roll_back(exc, old, change_id)
        self.machine.to(Phase.IDLE, f"online at {self.target}")
        return Outcome(True, self.target, change_id=change_id)

    def _check_step(self, step: dict[str, Any]) -> None:
        """A scenario step's check, with its retries; ScenarioCheckError when it does not pass."""
        lb = lb_params(self.svc, "ready") or {}
        fields = self.svc.fields(self.target)
        params = {**step, "step": step["name"], "version": self.target,
                  "url": commands.render(step["url"], fields, quote=False) if step.get("url") else None,
                  "check_command": self.svc.command(step["check_command"], self.target)
                  if step.get("check_command") else None,
                  "socket": lb.get("socket"), "backend": lb.get("backend"), "server": lb.get("server")}
        try:
            seen = self.host.scenario_check(params)
        except ScenarioCheckError as exc:
            self.step_results.append({"step": step["name"], "check": step["check"], "ok": False, "seen": str(exc)})
            raise
        self.step_results.append({"step": step["name"], "check": step["check"], "ok": True, "seen": seen[-200:]})
        log.info("%s: step %s: check %s passed: %s", self.service, step["name"], step["check"], seen)

    def _hold(self, exc: ScenarioCheckError, change_id: int | None) -> Outcome:
        """A scenario's check failed: no undo.  The node stays as the step left it (out of the load
        balancer), the failure halts the deploy, and the node is held (published failed) so it keeps
        counting against the quorum until its next restart or an operator's undo."""
        error = f"scenario check failed: {exc}"
        log.error("%s: %s; the node is held out (change set %s kept)", self.service, error, change_id)
        if self.on_failure is not None:
            try:
                self.on_failure(error)
            except ZkdeployError as report_exc:
                log.error("%s: could not report the failure: %s", self.service, report_exc)
        if self.machine.phase == Phase.WAITING:
            self.machine.to(Phase.IDLE, error)
        else:
            self.machine.to(Phase.HELD, error)
        return Outcome(False, self.host.releases[self.service].current_version(), error, False, change_id,
                       held=True)

    def _roll_back(self, exc: BaseException, old: str | None, change_id: int | None) -> Outcome:
        kinds: dict[type[BaseException], str] = {
            HealthCheckError: "health checks failed",
            LockLostError: "lost the restart slot",
            SessionLostError: "lost the ZooKeeper session",
        }
        kind = kinds.get(type(exc), "step failed")
        error = f"{kind}: {exc}"
        fenced = isinstance(exc, (LockLostError, SessionLostError))
        log.error("%s: %s; undoing change set %s", self.service, error, change_id)
        if self.on_failure is not None and not fenced:
            # Reported before the roll-back brings this node back online, so that no other
            # node takes its place in the quorum and restarts into a version known to fail.
            try:
                self.on_failure(error)
            except ZkdeployError as report_exc:
                log.error("%s: could not report the failure: %s", self.service, report_exc)
        if self.machine.phase == Phase.WAITING:  # failed before the first step: nothing to undo
            self.machine.to(Phase.IDLE, error)
            return Outcome(False, self.host.releases[self.service].current_version(), error, True,
                           change_id, fenced)
        self._timed(Phase.ROLLING_BACK)
        self.machine.to(Phase.ROLLING_BACK, error)
        healthy = old is not None
        if change_id is not None:
            try:
                report = undo_change(self.host.journal, self.host.registry, change_id)
                log.info("%s: change set %d %s", self.service, change_id, report.status)
            except ZkdeployError as undo_exc:
                healthy = False
                log.error("%s: undo of change set %d failed: %s", self.service, change_id, undo_exc)
        self.machine.to(Phase.IDLE, f"rolled back to {old}: {error}")
        return Outcome(False, self.host.releases[self.service].current_version(), error, healthy, change_id, fenced)
