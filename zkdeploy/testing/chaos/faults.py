"""How each fault kind is carried out: the table :data:`INJECTORS` (kind -> function) and its functions.

Agents SIGKILLed or SIGSTOPped; one agent's link to ZooKeeper cut, or its replies dropped and its
connection reset (through its own proxies, :mod:`.links`); ZooKeeper servers killed (the leader,
a follower, the whole ensemble); a service's health endpoint made to answer garbage, hang or flap
(the demo service's switch file); an agent killed while the release it checks fails; operator
commands (pause/resume, killswitch on/off, abort, rollback, undo) through the real CLI.

Each function is registered with :func:`injects` and is called by the
:class:`~zkdeploy.testing.chaos.injector.Injector` in the fault's own thread, at the fault's
moment; it picks its target through the injector, hits it, holds, resumes it and appends its
:class:`~zkdeploy.testing.chaos.result.FaultRecord`, every signal and restart under the
injector's lock.  A new kind that hits an agent's host needs only a :class:`HostAction` (what to
do to the host, and how to bring it back) passed to :meth:`Injector.host_fault`; other targets
write their own function.  The kind itself is registered in :mod:`zkdeploy.testing.chaos.plan`.
Importing this module fills the table and starts nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from zkdeploy.demo.fleet import Host, health_fault_file
from zkdeploy.errors import ZkdeployError
from zkdeploy.model import DeployEntry
from zkdeploy.policy.progress import active_deploy
from zkdeploy.testing.chaos.plan import (
    HEALTH_FLAP,
    HEALTH_HANG,
    HEALTH_MALFORMED,
    KILL,
    LINK_CUT_LONG,
    LINK_CUT_SHORT,
    OP_ABORT,
    OP_KILLSWITCH,
    OP_PAUSE,
    OP_ROLLBACK,
    OP_UNDO,
    REPLY_DROP,
    RESTART_FAILING,
    STOP_LONG,
    STOP_SHORT,
    ZK_FOLLOWER,
    ZK_LEADER,
    ZK_RESTART,
    PlannedFault,
)
from zkdeploy.testing.chaos.result import FaultRecord
from zkdeploy.testing.chaos.scenario import FAILING_SERVICE, OLD
from zkdeploy.testing.tcpproxy import DOWN, ProxyGroup
from zkdeploy.testing.zkserver import ZkServer

if TYPE_CHECKING:  # the injector looks its functions up here: it imports this module, not the reverse
    from zkdeploy.testing.chaos.injector import Injector


InjectFn = Callable[["Injector", PlannedFault], None]

#: how each fault kind is carried out
INJECTORS: dict[str, InjectFn] = {}


def injects(*kinds: str) -> Callable[[InjectFn], InjectFn]:
    """Register the decorated function as the way to carry out faults of ``kinds``."""
    def register(fn: InjectFn) -> InjectFn:
        for kind in kinds:
            if kind in INJECTORS:
                raise ValueError(f"fault kind {kind!r} already has an injector")
            INJECTORS[kind] = fn
        return fn
    return register


@dataclass(frozen=True)
class HostAction:
    """A fault on an agent's host: ``hit`` and ``resume`` run under the injector's lock.

    ``resume(injector, host, pid)`` gets the pid the agent had when hit.  On cancel, the host
    is resumed only when ``resume_on_cancel`` (a stopped agent must be continued to be stopped
    cleanly; a killed one is not restarted).  ``resumed`` is the log's word for it.
    """

    hit: Callable[[Injector, Host], None]
    resume: Callable[[Injector, Host, int], None]
    resume_on_cancel: bool
    resumed: str


def _sigkill(_injector: Injector, host: Host) -> None:
    assert host.process is not None
    host.process.send_signal(signal.SIGKILL)
    host.process.wait(timeout=30)


def _restart_agent(injector: Injector, host: Host, _pid: int) -> None:
    injector.fleet.start_agent(host)


def _sigstop(_injector: Injector, host: Host) -> None:
    assert host.process is not None
    os.kill(host.process.pid, signal.SIGSTOP)


def _sigcont(_injector: Injector, _host: Host, pid: int) -> None:
    os.kill(pid, signal.SIGCONT)


AGENT_KILL = HostAction(_sigkill, _restart_agent, resume_on_cancel=False, resumed="restarted")
AGENT_STOP = HostAction(_sigstop, _sigcont, resume_on_cancel=True, resumed="continued")


@injects(KILL)
def kill_agent(injector: Injector, fault: PlannedFault) -> None:
    """SIGKILL of an agent (its services live on); a new agent process is started after the hold."""
    injector.host_fault(fault, AGENT_KILL)


@injects(STOP_LONG, STOP_SHORT)
def stop_agent(injector: Injector, fault: PlannedFault) -> None:
    """SIGSTOP of an agent, SIGCONT after the hold (longer or shorter than its session timeout)."""
    injector.host_fault(fault, AGENT_STOP)


@injects(ZK_LEADER)
def kill_zk_leader(injector: Injector, fault: PlannedFault) -> None:
    """SIGKILL of the ZooKeeper ensemble's leader (found within 10 s), restarted after the hold."""
    _kill_server(injector, fault, ZK_LEADER, ("leader", "standalone"))


# -- one agent's link to ZooKeeper -------------------------------------------------------------
def _link(injector: Injector, host: Host) -> ProxyGroup:
    try:
        return injector.links[host.name]
    except KeyError:
        raise ZkdeployError(f"{host.name} has no proxied link to ZooKeeper (the fleet is not proxied)") from None


LINK_CUT = HostAction(lambda inj, host: _link(inj, host).stall(),
                      lambda inj, host, _pid: _link(inj, host).restore(),
                      resume_on_cancel=True, resumed="link restored")


def _reset_link(injector: Injector, host: Host, _pid: int) -> None:
    link = _link(injector, host)
    link.reset()    # the client sees its connection reset and reconnects within its session
    link.restore()


REPLIES_DROPPED = HostAction(lambda inj, host: _link(inj, host).drop(DOWN), _reset_link,
                             resume_on_cancel=True, resumed="connection reset, link restored")


@injects(LINK_CUT_SHORT, LINK_CUT_LONG)
def cut_link(injector: Injector, fault: PlannedFault) -> None:
    """One agent's link to ZooKeeper stalled both ways (its host and services run on), restored
    after the hold: shorter or longer than the session timeout."""
    injector.host_fault(fault, LINK_CUT)


@injects(REPLY_DROP)
def drop_replies(injector: Injector, fault: PlannedFault) -> None:
    """Requests reach ZooKeeper (and are applied) but its replies to one agent are dropped for the
    hold; then the connection is reset and the agent reconnects within its session.  Aimed at a
    host that waits in a restart queue or holds a slot, where a lost reply matters most."""
    preferred = (lambda: injector.restarting_hosts(queued=True)) if fault.prefer_restarting else None
    injector.host_fault(fault, REPLIES_DROPPED, preferred=preferred)


# -- ZooKeeper servers ---------------------------------------------------------------------------------
def _find_server(injector: Injector, modes: tuple[str, ...]) -> ZkServer | None:
    """The first server in one of ``modes``, looked for within 10 s (None: none, or cancelled)."""
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline and not injector.cancelled():
        found = [s for s in injector.cluster.servers if s.mode() in modes]
        if found:
            return found[0]
        injector.sleep(0.2)
    return None


def _kill_server(injector: Injector, fault: PlannedFault, kind: str, modes: tuple[str, ...]) -> None:
    """SIGKILL of a ZooKeeper server in one of ``modes``, restarted after the fault's hold."""
    server = _find_server(injector, modes)
    if server is None:
        return
    with injector.lock:
        if injector.cancelled():
            return
        record = FaultRecord(kind, f"zk:{server.client_port}", time.time(), None, fault.hold)
        server.kill(signal.SIGKILL)
        injector.records.append(record)
    injector.log.say(f"{kind}: killed server {server.myid} (port {server.client_port})")
    if injector.sleep(fault.hold):
        return
    with injector.lock:
        if injector.cancelled():
            return
        injector.cluster.restart(server, timeout=60)
        record.resumed = time.time()
    injector.log.say(f"{kind}: server {server.myid} restarted")


@injects(ZK_FOLLOWER)
def kill_zk_follower(injector: Injector, fault: PlannedFault) -> None:
    """SIGKILL of a ZooKeeper follower (found within 10 s), restarted after the hold."""
    _kill_server(injector, fault, ZK_FOLLOWER, ("follower",))


@injects(ZK_RESTART)
def restart_zk_ensemble(injector: Injector, fault: PlannedFault) -> None:
    """Every ZooKeeper server SIGKILLed at once, all started again after the hold; resumed when
    every server serves again (bounded by 60 s)."""
    servers = injector.cluster.servers
    with injector.lock:
        if injector.cancelled():
            return
        record = FaultRecord(ZK_RESTART, "zk:all", time.time(), None, fault.hold)
        for server in servers:
            server.kill(signal.SIGKILL)
        injector.records.append(record)
    injector.log.say("zk-restart: every server killed")
    if injector.sleep(fault.hold):
        return
    with injector.lock:
        if injector.cancelled():
            return
        for server in servers:
            server.start()
        deadline = time.monotonic() + 60.0
        while time.monotonic() < deadline and any(s.mode() is None for s in servers):
            time.sleep(0.2)
        record.resumed = time.time()
        serving = sum(1 for s in servers if s.mode() is not None)
    injector.log.say(f"zk-restart: servers started again ({serving}/{len(servers)} serving)")


# -- health endpoints -------------------------------------------------------------------------------
HEALTH_WORDS = {HEALTH_MALFORMED: "malformed", HEALTH_HANG: "hang", HEALTH_FLAP: "flap"}


def set_health_fault(host: Host, service: str, word: str | None) -> None:
    """Break (``word``) or mend (None) /health of ``service`` on ``host`` (the demo service's switch)."""
    path = health_fault_file(host.root, service)
    if word is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(word + "\n")
    os.replace(tmp, path)


@injects(HEALTH_MALFORMED, HEALTH_HANG, HEALTH_FLAP)
def break_health(injector: Injector, fault: PlannedFault) -> None:
    """One service's /health on one host answers bytes that are not HTTP, hangs, or flaps
    (500/200 by turns) for the hold; GET / goes on answering.  Aimed (when the fault prefers it)
    at a service being restarted, whose check then sees it."""
    services = [s.name for s in injector.fleet.services]
    hosts = injector.fleet.hosts
    host, service = hosts[fault.pick % len(hosts)], services[(fault.pick >> 8) % len(services)]
    if fault.prefer_restarting:
        restarting = [h for h in hosts if h.name in injector.restarting_hosts()]
        if restarting:
            host = restarting[fault.pick % len(restarting)]
            service = injector.slot_of(host.name) or service
    with injector.lock:
        if injector.cancelled() or (host.name, service) in injector.health_busy:
            return
        injector.health_busy.add((host.name, service))
        phases = injector._phases(host.name)
        record = FaultRecord(fault.kind, host.name, time.time(), None, fault.hold, detail=phases, service=service)
        set_health_fault(host, service, HEALTH_WORDS[fault.kind])
        injector.records.append(record)
    injector.log.say(f"{fault.kind} {host.name} {service} ({phases})")
    try:
        injector.sleep(fault.hold)
    finally:
        with injector.lock:
            set_health_fault(host, service, None)
            injector.health_busy.discard((host.name, service))
            record.resumed = time.time()
    injector.log.say(f"{fault.kind} {host.name} {service}: mended")


@injects(RESTART_FAILING)
def restart_while_failing(injector: Injector, fault: PlannedFault) -> None:
    """SIGKILL of an agent whose restart is checking a release that fails its health check, a new
    agent after the hold.  Aimed at a host holding a restart slot (waiting up to 15 s for one);
    unless the run's release fails by itself, its /health is made to answer garbage from just
    before the kill until a hold after the new agent started."""
    host = injector.choose_host(fault, preferred=injector.restarting_hosts, wait_preferred=15.0)
    if host is None:
        return
    service = injector.slot_of(host.name)
    broken_at: float | None = None  # the service is down for the agents from here (its check fails)
    record: FaultRecord | None = None
    try:
        if service is not None:
            failing_by_itself = injector.plan.fail_health and service == FAILING_SERVICE
            if not failing_by_itself:
                with injector.lock:
                    set_health_fault(host, service, "malformed")
                    broken_at = time.time()
            deadline = time.monotonic() + 8.0  # the service starts in about 1 s, then is checked
            while time.monotonic() < deadline and injector.phase_of(host.name, service) != "checking" \
                    and not injector.cancelled():
                injector.sleep(0.1)
        record = injector.host_fault(fault, AGENT_KILL, host=host, service=service or "", since=broken_at)
        if record is not None and service is None:
            record.detail += " (no restart under way)"
        if record is None and broken_at is not None:  # the agent was not killed: the broken health is the fault
            record = FaultRecord(fault.kind, host.name, broken_at, None, fault.hold,
                                 detail="health broken, agent not killed", service=service or "")
            with injector.lock:
                injector.records.append(record)
        if broken_at is not None and not injector.cancelled():
            injector.sleep(fault.hold)
    finally:
        if broken_at is not None:
            with injector.lock:
                set_health_fault(host, service or "", None)
            if record is not None:
                # the service stays down for the agents (its health check fails) until this moment, not
                # only until the new agent started: the judge's grace runs from here
                record.resumed = time.time()
        injector.release_host(host)  # again (host_fault released it too): also when it was never called


# -- operator commands --------------------------------------------------------------------------------
def _head(injector: Injector) -> DeployEntry | None:
    try:
        return active_deploy([e for e in injector.store.deploys() if e.is_open])
    except ZkdeployError:
        return None


def _operator(injector: Injector, *args: str, timeout: float = 60.0) -> tuple[int, str]:
    """Run ``zkdeploy ARGS`` as an operator would; (exit code, last line of its output)."""
    try:
        done = injector.fleet.cli(*args, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {timeout:g}s"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return done.returncode, (lines[-1][:160] if lines else "")


def _operator_fault(injector: Injector, fault: PlannedFault, target: str, service: str, command: list[str],
                    undo: list[str] | None = None, timeout: float = 60.0) -> None:
    """Record and run ``command``; with ``undo`` (resume, killswitch off), run it after the hold."""
    if injector.cancelled():
        return
    record = FaultRecord(fault.kind, target, time.time(), None, fault.hold, service=service)
    with injector.lock:
        injector.records.append(record)
    code, said = _operator(injector, *command, timeout=timeout)
    record.detail = f"{' '.join(command[:2])}: exit {code}" + (f" {said}" if code else "")
    injector.log.say(f"{fault.kind}: zkdeploy {' '.join(command)} -> exit {code}: {said}")
    if undo is None or code != 0:
        record.resumed = time.time()
        return
    injector.sleep(fault.hold)  # on cancel too: a paused deploy or the killswitch must not outlive the run
    code, said = _operator(injector, *undo, timeout=timeout)
    record.resumed = time.time()
    record.detail += f"; {' '.join(undo[:2])}: exit {code}" + (f" {said}" if code else "")
    injector.log.say(f"{fault.kind}: zkdeploy {' '.join(undo)} -> exit {code}: {said}")


@injects(OP_PAUSE)
def pause_deploy(injector: Injector, fault: PlannedFault) -> None:
    """``zkdeploy pause`` of the active deploy, ``zkdeploy resume`` after the hold."""
    head = _head(injector)
    if head is None:
        return
    _operator_fault(injector, fault, head.name, head.service, ["pause", head.name], ["resume", head.name])


@injects(OP_KILLSWITCH)
def killswitch(injector: Injector, fault: PlannedFault) -> None:
    """``zkdeploy killswitch on``, ``off`` after the hold."""
    _operator_fault(injector, fault, "fleet", "", ["killswitch", "on", "-m", "chaos"], ["killswitch", "off"])


@injects(OP_ABORT)
def abort_deploy(injector: Injector, fault: PlannedFault) -> None:
    """``zkdeploy abort`` of the active deploy."""
    head = _head(injector)
    if head is None:
        return
    _operator_fault(injector, fault, head.name, head.service, ["abort", head.name, "--force"])


@injects(OP_ROLLBACK)
def roll_back(injector: Injector, fault: PlannedFault) -> None:
    """``zkdeploy rollback SERVICE --to OLD`` of the active deploy's service (or, with none
    active, of a service chosen by the plan)."""
    head = _head(injector)
    services = [s.name for s in injector.fleet.services]
    service = head.service if head is not None else services[fault.pick % len(services)]
    _operator_fault(injector, fault, service, service, ["rollback", service, "--to", OLD, "--json", "--yes"])


@injects(OP_UNDO)
def undo_node(injector: Injector, fault: PlannedFault) -> None:
    """``zkdeploy undo --node N --last 1`` of a node chosen by the plan (under the quorum rules)."""
    hosts = injector.fleet.hosts
    node = hosts[fault.pick % len(hosts)].name
    _operator_fault(injector, fault, node, "", ["undo", "--node", node, "--last", "1", "--force",
                                               "--timeout", "30", "--json"], timeout=45.0)
