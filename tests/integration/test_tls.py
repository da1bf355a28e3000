"""TLS to ZooKeeper's secure port (Netty), with a CA made at test time (issue 13)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from zkdeploy.coordination import Store
from zkdeploy.coordination.acls import RoleIds, apply, open_session
from zkdeploy.coordination.credentials import Credentials, Security, TlsOptions, digest_id
from zkdeploy.errors import AccessDeniedError, CoordinationError
from zkdeploy.model import ONLINE, RESTARTING, CurrentEntry, DeployEntry, NodeRecord
from zkdeploy.testing.tlsca import TestCA
from zkdeploy.testing.zkserver import TlsZooKeeper, available

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tls_zk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsZooKeeper]:
    reason = available()
    if reason:
        pytest.fail(f"TLS tests need a ZooKeeper server: {reason}")
    zk = TlsZooKeeper(tmp_path_factory.mktemp("tls")).start()
    yield zk
    zk.stop()


def _creds(tmp_path: Path, role: str) -> Credentials:
    path = tmp_path / f"{role}.yaml"
    path.write_text(yaml.safe_dump({"role": role, "user": f"zkdeploy-{role}", "password": f"{role}-pw"}))
    path.chmod(0o600)
    return Credentials.load(path)


def test_the_agent_protocol_over_tls_with_client_certificates_as_node_identities(
        tls_zk: TlsZooKeeper, zk_root: str, tmp_path: Path) -> None:
    ca = str(tls_zk.ca.cert)
    operator = Security(_creds(tmp_path, "operator"), TlsOptions(ca=ca))
    roles = RoleIds.from_data({r: [f"digest:{digest_id(f'zkdeploy-{r}', f'{r}-pw')}"]
                               for r in ("operator", "agent", "viewer")}, "test")
    raw = open_session(tls_zk.hosts, zk_root, operator, wrap=False)
    try:
        apply(raw, zk_root, roles, operator.owner_id)
    finally:
        raw.close()
    web1, web2 = tls_zk.ca.issue("web1"), tls_zk.ca.issue("web2")
    agent_creds = _creds(tmp_path, "agent")
    a1 = Store.connect(tls_zk.hosts, zk_root, Security(agent_creds, TlsOptions(ca, str(web1.cert), str(web1.key))))
    a2 = Store.connect(tls_zk.hosts, zk_root, Security(agent_creds, TlsOptions(ca, str(web2.cert), str(web2.key))))
    op = Store.connect(tls_zk.hosts, zk_root, operator)
    try:
        [name] = op.enqueue([DeployEntry(service="web", version="2")])
        a1.register_node(NodeRecord(node="web1"))
        a1.add_member("web", "web1")
        raw = open_session(tls_zk.hosts, zk_root, operator, wrap=False)
        try:  # admission: web1's member record is owned by its certificate, whose CN is web1
            assert apply(raw, zk_root, roles, operator.owner_id).admitted == ["web/web1"]
        finally:
            raw.close()
        a1.publish_current("web", CurrentEntry(node="web1", version="1", state=ONLINE))
        view = a1.quorum_view("web", "web1")  # what the head reads before taking a slot
        a1.take_slot("web", a1.current("web")["web1"].evolve(state=RESTARTING), view.epoch)
        a1.publish_current("web", CurrentEntry(node="web1", version="2", state=RESTARTING))
        a1.release_slot("web", "web1")
        a1.publish_current("web", CurrentEntry(node="web1", version="2", state=ONLINE))
        # the certificate is the owner: another agent (same role credentials, other certificate) cannot rewrite it
        with pytest.raises(AccessDeniedError):
            a2._session.set(a2._layout.current_entry("web", "web1"), b'{"node": "web1", "state": "failed"}')
        with pytest.raises(AccessDeniedError):
            a2.enqueue([DeployEntry(service="web", version="3")])
        assert op.current("web")["web1"].version == "2"
        assert [d.name for d in op.deploys()] == [name]
    finally:
        for s in (a1, a2, op):
            s.close()


def test_a_server_certificate_from_another_ca_is_refused(tls_zk: TlsZooKeeper, tmp_path: Path) -> None:
    other = TestCA(tmp_path / "other", name="someone else")
    with pytest.raises(CoordinationError, match="certificate verify failed"):
        Store.connect(tls_zk.hosts, "/x", Security(tls=TlsOptions(ca=str(other.cert))), connect_timeout=3.0)


def test_a_server_certificate_for_another_host_name_is_refused(tls_zk: TlsZooKeeper) -> None:
    # the server's certificate names zk.test.invalid and 127.0.0.1, not localhost
    with pytest.raises(CoordinationError, match="Hostname mismatch"):
        Store.connect(f"localhost:{tls_zk.port}", "/x", Security(tls=TlsOptions(ca=str(tls_zk.ca.cert))),
                      connect_timeout=3.0)


def test_an_unprotected_client_key_is_refused(tls_zk: TlsZooKeeper, tmp_path: Path) -> None:
    client = tls_zk.ca.issue("careless")
    client.key.chmod(0o644)
    with pytest.raises(Exception, match="accessible to other users"):
        Store.connect(tls_zk.hosts, "/x", Security(tls=TlsOptions(str(tls_zk.ca.cert), str(client.cert),
                                                                  str(client.key))), connect_timeout=3.0)
