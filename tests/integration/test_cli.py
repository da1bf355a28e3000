"""The operator CLI against a real ZooKeeper: what it stores, and what it refuses."""

from __future__ import annotations

import io
import json
import os
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from zkdeploy.cli.main import cli
from zkdeploy.coordination import Store
from zkdeploy.model import ONLINE, CurrentEntry

pytestmark = pytest.mark.integration

CATALOG = """\
services:
  db:
    quorum: 2
    start: "sleep 100"
    health_checks:
      - tcp: "127.0.0.1:{db_port}"
  web:
    depends_on: [db]
    quorum: "67%"
    start: "sleep 100"
"""


@pytest.fixture
def run(zk_hosts: str, zk_root: str):
    def invoke(*args: str):
        result = CliRunner().invoke(cli, ["--zk", zk_hosts, "--root", zk_root, "--zk-timeout", "5", *args])
        return result
    return invoke


@pytest.fixture
def catalog_file(tmp_path: Path) -> Path:
    path = tmp_path / "services.yaml"
    path.write_text(CATALOG)
    return path


def payload(tmp_path: Path, name: str = "p.tar.gz") -> Path:
    path = tmp_path / name
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("VERSION")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"2\n"))
    return path


def fleet_of(store: Store, n: int, services=("db", "web")) -> None:
    """Stand-in agents: /current entries written to the real server."""
    for i in range(n):
        for service in services:
            store.publish_current(service, CurrentEntry(node=f"n{i}", version="1", state=ONLINE))


def test_services_apply_shows_the_diff_and_stores(run, catalog_file: Path, store: Store) -> None:
    result = run("services", "apply", str(catalog_file))
    assert result.exit_code == 0, result.output
    assert "+ db" in result.output and "+ web" in result.output
    assert set(store.catalog()[0]["services"]) == {"db", "web"}
    catalog_file.write_text(CATALOG.replace("quorum: 2", "quorum: 3"))
    result = run("services", "apply", str(catalog_file), "--dry-run")
    assert "~ db.quorum: 2 -> 3" in result.output and "nothing stored" in result.output
    assert store.catalog()[0]["services"]["db"]["quorum"] == 2
    listing = json.loads(run("services", "list", "--json").output)
    assert listing["web"]["depends_on"] == ["db"]


@pytest.mark.parametrize("text, expected", [
    ("services:\n  db: {quorum: 1, start: x\n", "malformed YAML (line 3"),
    ("services:\n  db: {quorum: 1, start: x, colour: red}\n", "services.db.colour: unknown key"),
    ("services:\n  a: {quorum: 1, start: x, depends_on: [b]}\n  b: {quorum: 1, start: x, depends_on: [a]}\n",
     "dependency cycle: a -> b -> a"),
    ("services:\n  ../x: {quorum: 1, start: x}\n", "invalid service name '../x'"),
])
def test_services_apply_refuses_bad_files_and_stores_nothing(run, tmp_path: Path, store: Store,
                                                             text: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = run("services", "apply", str(path))
    assert result.exit_code == 2
    assert expected in result.output and str(path) in result.output
    assert store.catalog() == (None, -1)


def test_stage_records_the_release(run, catalog_file: Path, tmp_path: Path, store: Store) -> None:
    run("services", "apply", str(catalog_file))
    path = payload(tmp_path)
    result = run("stage", "web", "2", str(path), "--json")
    assert result.exit_code == 0, result.output
    staged = json.loads(result.output)
    release = store.release("web", "2")
    assert release.sha256 == staged["sha256"] and release.size == path.stat().st_size
    assert release.origin == str(path.resolve())


@pytest.mark.parametrize("args, code, expected", [
    (["stage", "cache", "2", "{payload}"], 2, "unknown service 'cache'"),
    (["stage", "web", "../x", "{payload}"], 2, "invalid version name '../x'"),
    (["stage", "web", "2", "/nonexistent/p.tar.gz"], 2, "does not exist"),
    (["stage", "web", "2", "{notatar}"], 5, "not a readable tar archive"),
])
def test_stage_refuses_bad_input(run, catalog_file: Path, tmp_path: Path, store: Store,
                                 args: list[str], code: int, expected: str) -> None:
    run("services", "apply", str(catalog_file))
    notatar = tmp_path / "junk.tar.gz"
    notatar.write_bytes(b"not an archive")
    args = [a.replace("{payload}", str(payload(tmp_path))).replace("{notatar}", str(notatar)) for a in args]
    result = run(*args)
    assert result.exit_code == code, result.output
    assert expected in result.output
    assert store.releases("web") == {}


def test_deploy_queues_in_dependency_order(run, catalog_file: Path, tmp_path: Path, store: Store) -> None:
    run("services", "apply", str(catalog_file))
    fleet_of(store, 4)
    for service in ("db", "web"):
        run("stage", service, "2", str(payload(tmp_path, f"{service}.tar.gz")))
    result = run("deploy", "web", "db@2", "--json")
    assert result.exit_code == 0, result.output
    queued = json.loads(result.output)["queued"]
    assert [(q["service"], q["version"]) for q in queued] == [("db", "2"), ("web", "2")]
    status = json.loads(run("status", "--json").output)
    assert status["active_deploy"]["service"] == "db"
    web = next(s for s in status["services"] if s["service"] == "web")
    assert web["target"] == "2" and web["waiting_for"].startswith("queued behind db@2")
    db = next(s for s in status["services"] if s["service"] == "db")
    assert db["required_online"] == 2 and db["versions"] == [{"version": "1", "state": "online", "nodes": 4}]


@pytest.mark.parametrize("nodes, targets, expected", [
    (4, ["cache@2"], "unknown service 'cache'"),
    (4, ["db@3"], "db@3 is not staged"),
    (2, ["db@2"], "quorum 2 needs 2 of 2 member(s) online, so no node could ever restart"),
    (0, ["db@2"], "db: no node runs it"),
    (4, ["db@../x"], "invalid version name"),
])
def test_deploy_refuses_and_queues_nothing(run, catalog_file: Path, tmp_path: Path, store: Store,
                                           nodes: int, targets: list[str], expected: str) -> None:
    run("services", "apply", str(catalog_file))
    fleet_of(store, nodes)
    run("stage", "db", "2", str(payload(tmp_path)))
    result = run("deploy", *targets)
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert store.deploys() == []


def test_deploy_wait_times_out_with_exit_4(run, catalog_file: Path, tmp_path: Path, store: Store) -> None:
    run("services", "apply", str(catalog_file))
    fleet_of(store, 4)  # stand-in agents that never restart anything
    run("stage", "db", "2", str(payload(tmp_path)))
    result = run("deploy", "db@2", "--wait", "--timeout", "1")
    assert result.exit_code == 4
    assert "gave up waiting after 1s; the rollout goes on" in result.output


def test_killswitch_and_abort(run, catalog_file: Path, tmp_path: Path, store: Store) -> None:
    assert run("killswitch", "on").exit_code == 2  # a message is required
    result = run("killswitch", "on", "-m", "incident 42")
    assert result.exit_code == 0 and "incident 42" in result.output
    status = json.loads(run("status", "--json").output)
    assert status["killswitch"]["message"] == "incident 42"
    assert run("killswitch", "off").exit_code == 0 and store.killswitch() is None
    run("services", "apply", str(catalog_file))
    fleet_of(store, 4)
    run("stage", "db", "2", str(payload(tmp_path)))
    name = json.loads(run("deploy", "db@2", "--json").output)["queued"][0]["name"]
    assert run("abort", "d-9999999999", "--force").exit_code == 2
    assert run("abort", name, "--force").exit_code == 0
    assert store.deploy(name).state == "aborted"


def test_nodes_lists_registered_agents(run, store: Store) -> None:
    from zkdeploy.model import NodeRecord
    store.register_node(NodeRecord(node="n1", address="198.18.0.1", services=("db", "web"),
                                   labels={"rack": "r1"}, agent_version="0.1.0"))
    store.publish_current("db", CurrentEntry(node="n1", version="7", state=ONLINE))
    rows = json.loads(run("nodes", "--json").output)
    assert rows == [{"node": "n1", "present": True, "address": "198.18.0.1", "labels": {"rack": "r1"},
                     "agent_version": "0.1.0", "last_seen": None, "pins": {},
                     "services": {"db": {"version": "7", "state": "online", "phase": "idle"}, "web": None}}]


def test_absent_members_are_shown_counted_and_forgotten_only_when_gone(run, catalog_file: Path, store: Store,
                                                                       zk_hosts: str, zk_root: str) -> None:
    from zkdeploy.model import NodeRecord
    run("services", "apply", str(catalog_file))
    agents = []  # six stand-in agents, each with its own session, registered the way an agent registers
    for i in range(6):
        agent = Store.connect(zk_hosts, zk_root, session_timeout=4.0)
        agents.append(agent)
        agent.register_node(NodeRecord(node=f"n{i}", address=f"198.18.0.{i}", services=("db", "web")))
        for service in ("db", "web"):
            agent.add_member(service, f"n{i}")
            agent.publish_current(service, CurrentEntry(node=f"n{i}", version="1", state=ONLINE))
    try:
        result = run("nodes", "forget", "n5", "--force")
        assert result.exit_code == 2, result.output
        assert "n5 is present" in result.output and "n5" in store.members("web")
        agents[5].close()  # n5's agent stops: its presence and /current entries go with its session
        status = json.loads(run("status", "--json").output)
        web = next(s for s in status["services"] if s["service"] == "web")
        # 67% of the 6 members is 5 (of the 5 present it would be 4): n5 is a member, absent, counted as down
        assert (web["nodes"], web["members"], web["required_online"]) == (5, 6, 5)
        assert [m["node"] for m in web["absent"]] == ["n5"]
        assert datetime.fromisoformat(web["absent"][0]["last_seen"]).tzinfo == UTC  # ISO 8601 UTC, as all --json
        text = run("status").output
        assert "absent members" in text and "n5" in text and "5/6" in text
        rows = {r["node"]: r for r in json.loads(run("nodes", "--json").output)}
        assert rows["n5"]["present"] is False and rows["n5"]["services"] == {"db": None, "web": None}
        assert rows["n5"]["last_seen"] == web["absent"][0]["last_seen"] and rows["n0"]["present"] is True
        assert "absent, last seen" in run("nodes").output
        # asked, and declined: nothing forgotten
        declined = run("nodes", "forget", "n5")  # no answer at the prompt: refused, exit 2
        assert declined.exit_code == 2 and "nothing was changed" in declined.output and "n5" in store.members("web")
        result = run("nodes", "forget", "n5", "--service", "web", "--yes", "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.output) == {"node": "n5", "forgotten": ["web"]}
        assert "n5" not in store.members("web") and "n5" in store.members("db")
        result = run("nodes", "forget", "n5", "--force")
        assert result.exit_code == 0 and "forgot n5 as a member of db" in result.output
        status = json.loads(run("status", "--json").output)
        assert all(s["absent"] == [] and s["members"] == 5 for s in status["services"])
        result = run("nodes", "forget", "n5", "--force")
        assert result.exit_code == 2 and "n5 is not a member of any service" in result.output
    finally:
        for agent in agents[:5]:
            agent.close()


def test_unreachable_zookeeper_exits_3(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--zk", "127.0.0.1:1", "--zk-timeout", "1", "status"])
    assert result.exit_code == 3
    assert "cannot reach ZooKeeper at 127.0.0.1:1" in result.output


def test_pause_resume_and_rollback_requests(run, catalog_file: Path, tmp_path: Path, store: Store) -> None:
    run("services", "apply", str(catalog_file))
    fleet_of(store, 4)
    for version in ("2", "3"):
        run("stage", "db", version, str(payload(tmp_path, f"db-{version}.tar.gz")))
    name = json.loads(run("deploy", "db@2", "--json").output)["queued"][0]["name"]
    assert store.deploy(name).previous == "1"  # the most popular version when it was queued
    assert run("pause", name).exit_code == 0 and store.deploy(name).state == "paused"
    status = json.loads(run("status", "--json").output)
    assert next(s for s in status["services"] if s["service"] == "db")["waiting_for"].startswith("paused")
    assert run("resume", name).exit_code == 0 and store.deploy(name).state == "pending"
    assert run("resume", name).exit_code == 2  # only a paused or halted deploy resumes
    # a rollback aborts the open deploy of the service and queues its own, to the version replaced
    assert run("rollback", "web").exit_code == 2  # nothing says what web would go back to
    result = run("rollback", "db", "--to", "1", "--json")
    assert result.exit_code == 2 and "db@1 is not staged" in result.output
    result = run("rollback", "db", "--to", "3", "--json", "--yes")  # it aborts an open deploy: asks first
    assert result.exit_code == 0, result.output
    assert store.deploy(name).state == "aborted"
    latest = store.deploys()[-1]
    assert (latest.service, latest.version, latest.kind) == ("db", "3", "rollback")


def test_stage_from_a_url_downloads_it_saying_how_far_it_got(run, catalog_file: Path, tmp_path: Path,
                                                               store: Store) -> None:
    import functools
    import http.server
    import threading

    run("services", "apply", str(catalog_file))
    path = tmp_path / "big.tar"
    with tarfile.open(path, "w") as tar:  # 3 MiB that do not compress: more than one step of the meter
        blob = os.urandom(3 << 20)
        info = tarfile.TarInfo("blob")
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{path.name}"
        result = run("stage", "web", "2", url)
    finally:
        server.shutdown()
        server.server_close()
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "download" in line]
    assert lines and lines[-1].endswith("MiB, done"), result.output  # plain lines: not a terminal
    assert "\x1b[" not in result.output
    release = store.release("web", "2")
    assert release is not None and release.origin == url and release.size == path.stat().st_size
