"""A rollout under every security measure at once (issue 13): a real ZooKeeper reached only over its
TLS (Netty) port with a CA made now, ACL roles applied by `zkdeploy acl apply`, agent processes each
with the agent role's credentials (one with the steward role's: it alone writes the deploy's
progress) and a client certificate of its own as its node identity, and trusted release keys.

In one fleet: a signed release rolls out to completion (`zkdeploy deploy --wait`); a release
signed by a key the agents do not trust is refused, the deploy halts saying why and nothing on
the hosts changes; a viewer's deploy is refused (exit 2); an unsigned bad mark moves no node and a
signed one sends the fleet back past the release high-water mark.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import FAST, tree_digest, wait_for
from zkdeploy.coordination import Store
from zkdeploy.coordination.credentials import Credentials, Security, TlsOptions, digest_id
from zkdeploy.demo.fleet import DemoService, LocalFleet
from zkdeploy.journal import Journal
from zkdeploy.signing import generate
from zkdeploy.testing.zkserver import TlsZooKeeper, available

pytestmark = pytest.mark.e2e

PASSWORDS = {"operator": "op-secret", "steward": "steward-secret", "agent": "agent-secret", "viewer": "view-secret"}


@pytest.fixture(scope="module")
def tls_zk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsZooKeeper]:
    reason = available()
    if reason:
        pytest.fail(f"this test needs a ZooKeeper server: {reason}")
    zk = TlsZooKeeper(tmp_path_factory.mktemp("tls-zk")).start()
    yield zk
    zk.stop()


class SecureFleet:
    """Three hosts running web (quorum 2) under roles, over TLS, trusting one release key."""

    def __init__(self, zk: TlsZooKeeper, root: str, workdir: Path) -> None:
        self.zk = zk
        self.root = root
        self.workdir = workdir
        self.ca = str(zk.ca.cert)
        self.creds = {role: self._creds(role) for role in PASSWORDS}
        self.key, self.public, _ = generate(workdir / "release.key")
        self.fleet = LocalFleet(workdir / "fleet", zk.hosts, [DemoService("web", quorum=2, timing=FAST)],
                                size=3, root=root, session_timeout=4.0)
        self.store: Store | None = None

    def _creds(self, role: str) -> Path:
        path = self.workdir / f"{role}.yaml"
        path.write_text(yaml.safe_dump({"role": role, "user": f"zkdeploy-{role}", "password": PASSWORDS[role]}))
        path.chmod(0o600)
        return path

    def cli(self, role: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """The real CLI as ``role``: its credentials file and the CA, from the environment."""
        env = {**os.environ, "ZKDEPLOY_ZK_AUTH_FILE": str(self.creds[role]), "ZKDEPLOY_ZK_TLS_CA": self.ca}
        return subprocess.run([sys.executable, "-m", "zkdeploy", "--zk", self.zk.hosts, "--root", self.root,
                               *args], capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=self.workdir)

    def ok(self, role: str, *args: str) -> str:
        proc = self.cli(role, *args)
        assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    def start(self) -> None:
        policy = self.workdir / "acl.yaml"
        policy.write_text(yaml.safe_dump({role: [f"digest:{digest_id(f'zkdeploy-{role}', pw)}"]
                                          for role, pw in PASSWORDS.items()}))
        self.ok("operator", "acl", "apply", str(policy))
        self.fleet.write_configs()
        self.ok("operator", "services", "apply", str(self.fleet.catalog_file))
        for i, host in enumerate(self.fleet.hosts):  # each agent: its role, its own certificate, the release key
            cert = self.zk.ca.issue(host.name)
            config = yaml.safe_load(host.config.read_text())
            role = "steward" if i == 0 else "agent"  # one agent moves deploys on from the nodes' reports
            config["zookeeper"].update(auth_file=str(self.creds[role]),
                                       tls={"ca": self.ca, "cert": str(cert.cert), "key": str(cert.key)})
            config["signing"] = {"trusted_keys": [str(self.public)]}
            host.config.write_text(yaml.safe_dump(config))
            self.fleet.start_agent(host)
        self.store = Store.connect(self.zk.hosts, self.root, Security(Credentials.load(self.creds["viewer"]),
                                                                      TlsOptions(ca=self.ca)))
        wait_for(lambda: {h.name for h in self.fleet.hosts} <= set(self.view.current("web")), 60,
                 "every agent to register over TLS")
        # admission: each member record is owned by its certificate (CN = the node's name)
        out = self.ok("operator", "acl", "apply", str(policy))
        assert all(f"admitted web/{h.name}" in out for h in self.fleet.hosts), out
        assert "hard quotas are enforced" in out, out

    @property
    def view(self) -> Store:
        assert self.store is not None
        return self.store

    def versions(self) -> dict[str, tuple[str | None, str]]:
        return {n: (e.version, e.state) for n, e in self.view.current("web").items()}

    def stage(self, version: str, key: Path) -> None:
        payload = self.fleet.payload("web", version)
        self.ok("operator", "stage", "web", version, str(payload), "--sign", str(key))

    def hosts_now(self) -> dict[str, dict[str, str]]:
        return {h.name: tree_digest(h.root / "data") for h in self.fleet.hosts}

    def journal(self, host_name: str) -> list[tuple[str, str, str | None]]:
        host = next(h for h in self.fleet.hosts if h.name == host_name)
        with Journal.open(host.root / "data" / "state" / "journal.db", create=False) as journal:
            return [(c.description, c.status, c.note) for c in journal.list_changes()]

    def stop(self) -> None:
        self.fleet.stop()
        if self.store is not None:
            self.store.close()


@pytest.fixture
def secure(tls_zk: TlsZooKeeper, zk_root: str, tmp_path: Path) -> Iterator[SecureFleet]:
    fleet = SecureFleet(tls_zk, zk_root, tmp_path)
    try:
        fleet.start()
        yield fleet
    finally:
        fleet.stop()


@pytest.mark.timeout(420)
def test_a_signed_rollout_under_roles_and_tls_and_what_is_refused(secure: SecureFleet) -> None:
    nodes = {h.name for h in secure.fleet.hosts}
    # a signed release, rolled out to completion by `deploy --wait`, twice (install, then upgrade)
    for version in ("1", "2"):
        secure.stage(version, secure.key)
        out = secure.ok("operator", "deploy", f"web@{version}", "--wait", "--timeout", "150")
        assert secure.versions() == {n: (version, "online") for n in nodes}, out
        assert secure.view.quorum_view("web", "nobody").others_online == len(nodes)  # each admitted: its token

    # a release signed by a key no agent trusts (an operator credential without the release key)
    before = secure.hosts_now()
    mallory, _, mallory_id = generate(secure.workdir / "mallory.key")
    secure.stage("3", mallory)
    proc = secure.cli("operator", "deploy", "web@3", "--wait", "--timeout", "150")
    assert proc.returncode == 4, proc.stdout + proc.stderr
    said = proc.stdout + proc.stderr
    assert "refused release" in said and f"signed by key {mallory_id}, which this node does not trust" in said, said
    assert secure.versions() == {n: ("2", "online") for n in nodes}
    assert secure.hosts_now() == before  # nothing fetched, unpacked or switched on any host
    for name in nodes:
        refusals = [j for j in secure.journal(name) if "refused release 3" in j[0]]
        assert refusals and refusals[0][1] == "failed" and "does not trust" in (refusals[0][2] or ""), name
    [halted] = [d for d in secure.view.deploys() if d.version == "3"]
    assert halted.state == "halted" and "does not trust" in halted.message

    # a viewer may look but not deploy
    proc = secure.cli("viewer", "deploy", "web@2")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "not allowed with this client's credentials" in proc.stdout + proc.stderr
    assert json.loads(secure.ok("viewer", "status", "--json"))["services"]

    # marks: an unsigned bad mark moves no node back; the operator's signed one does (past the
    # high-water mark of release 2), under the quorum rules
    secure.ok("operator", "abort", halted.name, "--yes")
    secure.ok("operator", "mark", "web", "2", "bad", "-m", "unsigned", "--yes")
    wait_for(lambda: all("honoured only to halt" in h.log.read_text() for h in secure.fleet.hosts), 30,
             "every agent to see the unsigned mark")
    assert secure.versions() == {n: ("2", "online") for n in nodes}
    out = secure.ok("operator", "mark", "web", "2", "bad", "-m", "login broken", "--yes", "--sign", str(secure.key))
    assert "(signed, sequence 1)" in out, out  # the unsigned mark has none
    wait_for(lambda: secure.versions() == {n: ("1", "online") for n in nodes}, 90, "the fleet to go back to 1")
    assert not any("refused release 1" in j[0] for n in nodes for j in secure.journal(n))
