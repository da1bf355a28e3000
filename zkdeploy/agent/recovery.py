"""Settling what a crash left in the journal, without breaking the quorum.

When the agent starts, a restart that a crash interrupted is undone as a
whole (the node goes back to the release it ran, and rejoins the rollout
from there) if its service is down anyway: that only brings a service up.
When the service is running, stopping it without a restart slot could take
the fleet below its quorum (the node's session expired, so the others no
longer counted it), so settling waits until the agent is registered, and
then either keeps the new release (it runs and is healthy) or undoes the
change under a slot like any restart.
"""

from __future__ import annotations

import logging
from pathlib import Path

from zkdeploy.agent.host import Host
from zkdeploy.agent.host_actions import HOOKS
from zkdeploy.agent.metrics import Metrics
from zkdeploy.journal import NOTHING_TO_UNDO, recover, undo_change

log = logging.getLogger(__name__)

def undo_interrupted(host: Host, metrics: Metrics | None = None) -> None:
    """Finish or undo the in-flight task of every interrupted change set, then undo the sets (each
    counted in ``metrics`` by the status it ended in)."""
    interrupted: list[int] = []
    for action in recover(host.journal, host.registry, policy="undo"):
        log.warning("journal recovery: change set %s: %s %s", action.change_id, action.action, action.detail)
        interrupted.append(action.change_id)
    for change_id in dict.fromkeys(interrupted):
        change = host.journal.get_change(change_id)
        if change.status == "failed":
            report = undo_change(host.journal, host.registry, change.id)
            log.warning("journal recovery: undid change set %d (%s): %s", change.id, change.description,
                        report.status)
            if metrics is not None:
                metrics.change_set_finished(report.status, "recovery")


def settle_at_start(host: Host, metrics: Metrics | None = None) -> bool:
    """Settle what can be settled before ZooKeeper; True if the rest must wait for registration."""
    interrupted = host.journal.interrupted_changes()
    if not interrupted:
        return False
    if not any(host.change_left_running(change) for change in interrupted):
        undo_interrupted(host, metrics)
        return False
    log.warning("journal: change set(s) %s were interrupted while their service runs; settling them "
                "under a restart slot once registered", ", ".join(str(c.id) for c in interrupted))
    return True


def settle_registered(host: Host) -> list[str]:
    """Keep a healthy new release where the interrupted restart got that far; return the services
    whose interrupted change must still be undone, which the decision cycle does under a restart
    slot like any restart (``undo_interrupted``)."""
    services = host.services()
    waiting: list[str] = []
    for change in host.journal.interrupted_changes():
        service = next((t.execute.params.get("service") for t in change.tasks if t.execute.params.get("service")),
                       None)
        target = next((Path(t.execute.params["target"]).name for t in change.tasks
                       if t.execute.kind == "symlink_swap" and t.status == "done"), None)
        svc = services.get(service) if service else None
        if svc is None or service is None:
            log.error("journal: change set %d was interrupted on %s, which this node no longer runs; "
                      "settle it by hand (zkdeploy journal backout-steps %d)", change.id, service or "?", change.id)
            continue
        current = host.releases[service].current_version()
        if target is not None and current == target and host.probe(svc, current) is None:
            for action in recover(host.journal, host.registry, policy="complete"):
                log.warning("journal recovery: change set %s: %s %s (the new release runs and is healthy: kept)",
                            action.change_id, action.action, action.detail)
            # the crash may have come before the undrain: finish the restart's last step
            with host.executor.change_set(f"{service} {target}: finish change set {change.id} after a crash",
                                          deploy_id=change.deploy_id) as cs:
                cs.task(HOOKS, svc.hook_params("post_start", target), undo=NOTHING_TO_UNDO)
            continue
        waiting.append(service)
    return sorted(set(waiting))
