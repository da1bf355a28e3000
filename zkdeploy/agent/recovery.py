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
from collections.abc import Callable
from pathlib import Path
from typing import ContextManager

from zkdeploy.agent.host import Host
from zkdeploy.agent.host_actions import HOOKS
from zkdeploy.journal import NOTHING_TO_UNDO, ChangeSet, recover, undo_change
from zkdeploy.runner.process import ManagedProcess

log = logging.getLogger(__name__)

#: ``hold(services, why)``: a context that holds a restart slot of each service under the quorum rules
SlotHolder = Callable[[list[str], str], ContextManager[None]]


def process_running(change: ChangeSet) -> bool:
    """Whether a service process named by a change set's start/stop tasks is running now."""
    for task in change.tasks:
        if task.execute.params.get("managed") is False:
            return True  # a one-shot service cannot be seen from here: assume it runs
        pidfile = task.execute.params.get("pidfile")
        if pidfile and ManagedProcess(Path(pidfile), Path(task.execute.params["logfile"])).running():
            return True
    return False


def undo_interrupted(host: Host) -> None:
    """Finish or undo the in-flight task of every interrupted change set, then undo the sets."""
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


def settle_at_start(host: Host) -> bool:
    """Settle what can be settled before ZooKeeper; True if the rest must wait for registration."""
    interrupted = host.journal.interrupted_changes()
    if not interrupted:
        return False
    if not any(process_running(change) for change in interrupted):
        undo_interrupted(host)
        return False
    log.warning("journal: change set(s) %s were interrupted while their service runs; settling them "
                "under a restart slot once registered", ", ".join(str(c.id) for c in interrupted))
    return True


def settle_registered(host: Host, hold: SlotHolder) -> None:
    """Keep a healthy new release, or undo the interrupted change under a restart slot."""
    services = host.services()
    for change in host.journal.interrupted_changes():
        service = next((t.execute.params.get("service") for t in change.tasks if t.execute.params.get("service")),
                       None)
        target = next((Path(t.execute.params["target"]).name for t in change.tasks
                       if t.execute.kind == "symlink_swap" and t.status == "done"), None)
        svc = services.get(service) if service else None
        if svc is None or service is None:
            undo_interrupted(host)
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
        with hold([service], f"recovery of change set {change.id}"):
            undo_interrupted(host)
