"""The ZooKeeper layout, defined once.  Every znode path zkdeploy uses is built here.

::

    <root>/acl                              persistent  who holds each role (written by ``zkdeploy acl apply``)
    <root>/catalog                          persistent  the fleet catalog (JSON of conf/services.yaml)
    <root>/nodes/<node>                     ephemeral   agent presence (NodeRecord)
    <root>/current/<service>/<node>         ephemeral   version and state of a service on a node (CurrentEntry)
    <root>/up/<service>                     persistent  its data version is the service's availability epoch:
                                                        bumped by every change of a node's online-ness, and
                                                        the slot transaction is conditional on it
    <root>/up/<service>/<node>              persistent  the node's availability parent (made by ``zkdeploy acl
                                                        apply`` for admitted nodes under ACL roles; by the
                                                        agent itself otherwise); never removed
    <root>/up/<service>/<node>/on           ephemeral   the node's online token: there exactly while its entry
                                                        is online; the quorum decision counts them (one read)
    <root>/marks/<service>/m-<seq>          persistent-sequential  a mark of a release: bad, badfwd, good, none (Mark)
    <root>/pins/<node>/<service>            persistent  a pin: this node runs this release (Pin)
    <root>/members/<service>/<node>         persistent  a member of the service: a node that registered it (Member);
                                                        stays, present or not, until ``zkdeploy nodes forget``
    <root>/staging/<service>/<version>      persistent  release metadata (Release)
    <root>/staging/<service>/<version>/holders/<node>  ephemeral  nodes holding the verified payload
    <root>/staging/<service>/<version>/torrent    persistent  the payload's torrent metainfo
    <root>/staging/<service>/<version>/signature  persistent  the release record's Ed25519 signature
    <root>/deploy/d-<seq>                   persistent-sequential  the deploy queue (DeployEntry); its progress
                                                        is written by stewards only
    <root>/seals/<seal>                     persistent  what a deploy entry asks for, as queued (its digest)
    <root>/failures/<seal>                  persistent  made with its deploy entry: which nodes failed on it
    <root>/failures/<seal>/<node>           persistent  empty: a pointer to the node's own report (below)
    <root>/locks/<service>/queue/q-<uuid>__<seq>  ephemeral-sequential  FIFO of agents waiting to restart
    <root>/slots/<service>/<node>           persistent  the node's slot parent (made as its availability parent is)
    <root>/slots/<service>/<node>/slot      ephemeral   a restart in progress (proof of permission)
    <root>/swarm/<info-hash>/<node>         ephemeral   torrent peers (a holder whose swarm worker is stopped has none)
    <root>/wake/<node>                      persistent  where fetchers ask the node to seed (made as its availability
                                                        parent is: only the node removes what is asked)
    <root>/wake/<node>/w-<seq>              ephemeral-sequential  a fetcher asks a holder to seed an info-hash
    <root>/control/killswitch               persistent  present = no agent starts a new step
    <root>/reports/plans/p-<seq>            persistent-sequential  a fleet-wide dry run request
    <root>/reports/plans/p-<seq>/<node>     persistent  one node's plan (NoAction) for that request
    <root>/reports/history/<node>           persistent  the node's history parent (made as its availability parent is)
    <root>/reports/history/<node>/h-<seq>   persistent-sequential  one live change set on that node (bounded per node)
    <root>/reports/failed/<node>            persistent  the node's failure-report parent (made as its availability
                                                        parent is: only the node creates under it)
    <root>/reports/failed/<node>/<seal>     persistent  the node's failed restart on that deploy: error, time
    <root>/control/undo/<node>/u-<seq>      persistent-sequential  an operator's undo request for a node
"""

from __future__ import annotations

from dataclasses import dataclass

from zkdeploy.names import check_name

DEPLOY_PREFIX = "d-"
QUEUE_PREFIX = "q-"
PLAN_PREFIX = "p-"
HISTORY_PREFIX = "h-"
UNDO_PREFIX = "u-"
MARK_PREFIX = "m-"
WAKE_PREFIX = "w-"
ONLINE_TOKEN = "on"
SLOT = "slot"


@dataclass(frozen=True)
class Layout:
    """Znode paths under one fleet root (``/dc`` by default)."""

    root: str = "/dc"

    def _join(self, *parts: str) -> str:
        base = self.root.rstrip("/")
        return base + "/" + "/".join(parts)

    # the catalog
    @property
    def catalog(self) -> str:
        return self._join("catalog")

    # presence
    @property
    def nodes(self) -> str:
        return self._join("nodes")

    def node(self, node: str) -> str:
        return self._join("nodes", check_name("node", node))

    # /current
    @property
    def current(self) -> str:
        return self._join("current")

    def current_service(self, service: str) -> str:
        return self._join("current", check_name("service", service))

    def current_entry(self, service: str, node: str) -> str:
        return self.current_service(service) + "/" + check_name("node", node)

    # /up: the availability epochs, parents and online tokens the quorum decision counts
    @property
    def up(self) -> str:
        return self._join("up")

    def up_service(self, service: str) -> str:
        return self._join("up", check_name("service", service))

    def up_node(self, service: str, node: str) -> str:
        return self.up_service(service) + "/" + check_name("node", node)

    def online_token(self, service: str, node: str) -> str:
        return self.up_node(service, node) + "/" + ONLINE_TOKEN

    # /marks and /pins
    def marks(self, service: str) -> str:
        return self._join("marks", check_name("service", service))

    def mark(self, service: str, name: str) -> str:
        return self.marks(service) + "/" + check_name("mark", name)

    @property
    def pins(self) -> str:
        return self._join("pins")

    def node_pins(self, node: str) -> str:
        return self._join("pins", check_name("node", node))

    def pin(self, node: str, service: str) -> str:
        return self.node_pins(node) + "/" + check_name("service", service)

    # /members
    @property
    def members(self) -> str:
        return self._join("members")

    def service_members(self, service: str) -> str:
        return self._join("members", check_name("service", service))

    def member(self, service: str, node: str) -> str:
        return self.service_members(service) + "/" + check_name("node", node)

    # /staging
    @property
    def staging(self) -> str:
        return self._join("staging")

    def releases(self, service: str) -> str:
        return self._join("staging", check_name("service", service))

    def release(self, service: str, version: str) -> str:
        return self.releases(service) + "/" + check_name("version", version)

    def holders(self, service: str, version: str) -> str:
        return self.release(service, version) + "/holders"

    def holder(self, service: str, version: str, node: str) -> str:
        return self.holders(service, version) + "/" + check_name("node", node)

    # /deploy
    @property
    def deploy(self) -> str:
        return self._join("deploy")

    def deploy_entry(self, name: str) -> str:
        return self._join("deploy", check_name("deploy entry", name))

    @property
    def failures(self) -> str:
        return self._join("failures")

    def deploy_failures(self, key: str) -> str:
        """Where nodes report their failures on a deploy (``key``: its seal, or its name without one)."""
        return self._join("failures", check_name("deploy entry", key))

    def deploy_failure(self, key: str, node: str) -> str:
        """A pointer to ``node``'s report (anyone may make one: only the report itself counts)."""
        return self.deploy_failures(key) + "/" + check_name("node", node)

    @property
    def seals(self) -> str:
        return self._join("seals")

    def seal(self, name: str) -> str:
        """A deploy entry's seal: the digest of what it asks for, written by whoever queued it."""
        return self._join("seals", check_name("seal", name))

    # /locks
    def lock_queue(self, service: str) -> str:
        return self._join("locks", check_name("service", service), "queue")

    # /slots
    @property
    def all_slots(self) -> str:
        return self._join("slots")

    def slots(self, service: str) -> str:
        return self._join("slots", check_name("service", service))

    def slot_parent(self, service: str, node: str) -> str:
        return self.slots(service) + "/" + check_name("node", node)

    def slot(self, service: str, node: str) -> str:
        return self.slot_parent(service, node) + "/" + SLOT

    # /swarm
    def swarm(self, info_hash: str) -> str:
        return self._join("swarm", check_name("info-hash", info_hash))

    def swarm_peer(self, info_hash: str, node: str) -> str:
        return self.swarm(info_hash) + "/" + check_name("node", node)

    def wake(self, node: str) -> str:
        """Where fetchers ask ``node`` to start its swarm worker and seed (docs/swarm.md)."""
        return self._join("wake", check_name("node", node))

    # /control and /reports
    @property
    def control(self) -> str:
        return self._join("control")

    @property
    def killswitch(self) -> str:
        return self._join("control", "killswitch")

    @property
    def reports(self) -> str:
        return self._join("reports")

    @property
    def plans(self) -> str:
        return self._join("reports", "plans")

    def plan(self, name: str) -> str:
        return self.plans + "/" + check_name("plan request", name)

    def plan_answer(self, name: str, node: str) -> str:
        return self.plan(name) + "/" + check_name("node", node)

    @property
    def history(self) -> str:
        return self._join("reports", "history")

    def node_history(self, node: str) -> str:
        return self.history + "/" + check_name("node", node)

    @property
    def failed(self) -> str:
        return self._join("reports", "failed")

    def node_failed(self, node: str) -> str:
        """Where ``node`` reports its failures on deploys (a per-node parent: its own only)."""
        return self.failed + "/" + check_name("node", node)

    def failure_report(self, node: str, key: str) -> str:
        """``node``'s failure on the deploy whose failures key is ``key``."""
        return self.node_failed(node) + "/" + check_name("deploy entry", key)

    def undo_requests(self, node: str) -> str:
        return self._join("control", "undo", check_name("node", node))

    def undo_request(self, node: str, name: str) -> str:
        return self.undo_requests(node) + "/" + check_name("undo request", name)

    def base_paths(self) -> list[str]:
        """The persistent parents that must exist before anything else is written."""
        return [self.nodes, self.current, self.up, self.all_slots, self.members, self._join("marks"), self.pins,
                self.staging, self.deploy, self.seals, self.failures, self._join("locks"), self._join("swarm"),
                self._join("wake"), self.control, self.reports, self.plans, self.history, self.failed,
                self._join("control", "undo")]
