"""The CLI's contract against a real ZooKeeper (issue 14, defects 3, 6, 7, 10): refusals change
nothing and exit 2, interrupted waits say the rollout goes on, deploys can be listed and followed,
destructive commands ask first."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from zkdeploy.cli import live, output
from zkdeploy.cli.main import cli
from zkdeploy.coordination import Store
from zkdeploy.model import ABORTED, DONE, HALTED, ONLINE, PAUSED, PENDING, CurrentEntry

pytestmark = pytest.mark.integration

CATALOG = """\
services:
  db:
    quorum: 1
    start: "sleep 100"
  web:
    depends_on: [db]
    quorum: 1
    start: "sleep 100"
"""


@pytest.fixture
def run(zk_hosts: str, zk_root: str):
    def invoke(*args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(cli, ["--zk", zk_hosts, "--root", zk_root, "--zk-timeout", "5", *args],
                                  input=input)
    return invoke


def payload(tmp_path: Path, body: bytes = b"2\n", name: str = "p.tar.gz") -> Path:
    path = tmp_path / name
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("VERSION")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    return path


@pytest.fixture
def fleet(run, store: Store, tmp_path: Path) -> Store:
    """A catalog (db, web), three stand-in agents at version 1, and version 2 of both staged."""
    (tmp_path / "services.yaml").write_text(CATALOG)
    assert run("services", "apply", str(tmp_path / "services.yaml")).exit_code == 0
    for i in range(3):
        for service in ("db", "web"):
            store.publish_current(service, CurrentEntry(node=f"n{i}", version="1", state=ONLINE))
    for service in ("db", "web"):
        result = run("stage", service, "2", str(payload(tmp_path)), "--no-torrent")
        assert result.exit_code == 0, result.output
    return store


def queued(result: Result) -> list[str]:
    assert result.exit_code == 0, result.output
    return [q["name"] for q in json.loads(result.stdout)["queued"]]


# -- defect 3 ------------------------------------------------------------------------------
def test_restaging_a_version_with_other_bytes_is_refused_with_2_and_changes_nothing(run, fleet: Store,
                                                                                   tmp_path: Path) -> None:
    before = fleet.release("db", "2")
    result = run("stage", "db", "2", str(payload(tmp_path, b"other\n", "q.tar.gz")), "--no-torrent")
    assert result.exit_code == 2, result.output
    assert "already staged with a different payload" in result.output and "Traceback" not in result.output
    assert fleet.release("db", "2") == before


def test_ctrl_c_in_deploy_wait_says_the_rollout_goes_on_and_exits_130(run, fleet: Store,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(_store: Store) -> None:
        raise KeyboardInterrupt
    monkeypatch.setattr(live, "fleet_status", interrupted)
    result = run("deploy", "db@2", "--wait")
    assert result.exit_code == 130, result.output
    [entry] = fleet.deploys()
    assert entry.state == PENDING
    assert "the rollout goes on" in result.output and f"zkdeploy rollout status {entry.name}" in result.output
    assert "Aborted!" not in result.output


# -- defect 6 ------------------------------------------------------------------------------
def test_applying_an_empty_catalog_asks_first_and_stores_nothing_when_declined(run, fleet: Store,
                                                                               tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("services: {}\n")
    result = run("services", "apply", str(empty), input="n\n")
    assert result.exit_code == 2 and "nothing was changed" in result.output
    assert "deletes the whole catalog" in result.output
    assert set(fleet.catalog()[0]["services"]) == {"db", "web"}
    result = run("services", "apply", str(empty), "--yes")
    assert result.exit_code == 0, result.output
    assert fleet.catalog()[0]["services"] == {}


def test_removing_a_service_agents_still_run_warns_and_needs_confirmation(run, fleet: Store, tmp_path: Path) -> None:
    only_db = tmp_path / "db.yaml"
    only_db.write_text(CATALOG.split("  web:")[0])
    result = run("services", "apply", str(only_db), input="n\n")
    assert result.exit_code == 2
    assert "web is removed but 3 node(s) still run it" in result.output
    assert set(fleet.catalog()[0]["services"]) == {"db", "web"}
    assert run("services", "apply", str(only_db), "--force").exit_code == 0
    assert set(fleet.catalog()[0]["services"]) == {"db"}


# -- defect 7 ------------------------------------------------------------------------------
def test_deploys_lists_open_deploys_with_state_age_target_and_progress(run, fleet: Store) -> None:
    [first] = queued(run("deploy", "db@2", "--json"))
    fleet.publish_current("db", CurrentEntry(node="n0", version="2", state=ONLINE))
    result = run("deploys")
    assert result.exit_code == 0, result.output
    [line] = [x for x in result.output.splitlines() if first in x]
    assert "pending" in line and "db@2" in line and "1/3" in line
    rows = json.loads(run("deploys", "--json").stdout)
    assert [(r["name"], r["state"], r["progress"]) for r in rows] == [(first, "pending", {"done": 1, "total": 3})]
    fleet.update_deploy(fleet.deploy(first).evolve(state=DONE))
    assert json.loads(run("deploys", "--json").stdout) == []
    assert [r["name"] for r in json.loads(run("deploys", "--all", "--json").stdout)] == [first]


@pytest.mark.parametrize("state, code", [(DONE, 0), (HALTED, 4), (ABORTED, 4)])
def test_rollout_status_follows_a_deploy_by_its_number_and_exits_with_its_outcome(run, fleet: Store, state: str,
                                                                                  code: int) -> None:
    [name] = queued(run("deploy", "db@2", "--json"))
    fleet.update_deploy(fleet.deploy(name).evolve(state=state, message="why"))
    result = run("rollout", "status", str(int(name.removeprefix("d-"))), "--timeout", "5")
    assert result.exit_code == code, result.output
    assert f"{name} db@2: {state}" in result.output


def test_rollout_status_gives_up_at_its_timeout_with_4_and_the_rollout_goes_on(run, fleet: Store) -> None:
    [name] = queued(run("deploy", "db@2", "--json"))
    result = run("rollout", "status", name, "--timeout", "1.5", "--interval", "0.2")
    assert result.exit_code == 4, result.output
    assert "still pending after 1.5s" in result.output and "goes on" in result.output
    assert fleet.deploy(name).state == PENDING


def test_rollout_status_of_no_such_deploy_is_2(run, fleet: Store) -> None:
    result = run("rollout", "status", "999")
    assert result.exit_code == 2 and "no deploy d-0000000999" in result.output


# -- defect 10 -----------------------------------------------------------------------------
def test_pause_resume_and_abort_take_short_names_json_and_both_confirmation_spellings(run, fleet: Store) -> None:
    names = queued(run("deploy", "db@2", "web@2", "--json"))
    short = str(int(names[0].removeprefix("d-")))
    assert json.loads(run("pause", short, "--json").stdout) == {"paused": [names[0]]}
    assert json.loads(run("pause", "--all", "--json").stdout) == {"paused": [names[1]]}
    assert {fleet.deploy(n).state for n in names} == {PAUSED}
    assert json.loads(run("resume", "--all", "--json").stdout) == {"resumed": names}
    assert {fleet.deploy(n).state for n in names} == {PENDING}
    assert run("abort", short, "--yes").exit_code == 0
    assert run("abort", names[1], "--force").exit_code == 0
    assert {fleet.deploy(n).state for n in names} == {ABORTED}


def test_rollback_asks_before_aborting_open_deploys(run, fleet: Store) -> None:
    [name] = queued(run("deploy", "db@2", "--json"))
    result = run("rollback", "db", "--to", "2", input="n\n")
    assert result.exit_code == 2 and f"aborts {name} (pending)" in result.output
    assert [d.name for d in fleet.deploys()] == [name] and fleet.deploy(name).state == PENDING
    assert run("rollback", "db", "--to", "2", "--yes").exit_code == 0
    assert fleet.deploy(name).state == ABORTED and len(fleet.deploys()) == 2


def test_killswitch_says_what_it_replaces_and_show_json_has_who_and_since(run, fleet: Store) -> None:
    assert run("killswitch", "on", "-m", "first").exit_code == 0
    result = run("killswitch", "on", "-m", "second")
    assert result.exit_code == 0 and "replaced the earlier killswitch message: first" in result.output
    shown = json.loads(run("killswitch", "show", "--json").stdout)
    assert shown["on"] is True and shown["message"] == "second" and "@" in shown["by"] and shown["since"]


def test_deploy_while_the_killswitch_is_on_says_so_and_still_queues(run, fleet: Store) -> None:
    assert run("killswitch", "on", "-m", "freeze").exit_code == 0
    result = run("deploy", "db@2")
    assert result.exit_code == 0, result.output
    assert "the killswitch is on (freeze" in result.output
    assert len(fleet.deploys()) == 1


# -- a declined prompt: exit 2, "refused, nothing changed" (README's exit codes) ----------------
def _state(store: Store) -> tuple[object, ...]:
    return ([(d.name, d.state) for d in store.deploys()], store.catalog()[0],
            {s: sorted(store.marks(s)) for s in ("db", "web")})


@pytest.mark.parametrize("argv", [
    ["services", "apply", "{empty}"],
    ["abort", "{deploy}"],
    ["abort", "--all"],
    ["rollback", "db", "--to", "2"],
    ["mark", "db", "2", "bad", "-m", "corrupts data"],
], ids=lambda argv: " ".join(argv[:2]))
@pytest.mark.parametrize("answer", ["n\n", ""], ids=["no", "end of input"])
def test_declining_a_prompt_exits_2_and_changes_nothing(run, fleet: Store, tmp_path: Path, argv: list[str],
                                                        answer: str) -> None:
    [name] = queued(run("deploy", "db@2", "--json"))
    (tmp_path / "empty.yaml").write_text("services: {}\n")
    before = _state(fleet)
    result = run(*(a.format(empty=tmp_path / "empty.yaml", deploy=name) for a in argv), input=answer)
    assert result.exit_code == 2, result.output
    assert "not confirmed: nothing was changed" in result.output and "Aborted!" not in result.output
    assert _state(fleet) == before


# -- defect 10: one time format in every --json output ------------------------------------------
def _times(doc: object, where: str = "") -> Iterator[tuple[str, object]]:
    """Every (path, value) under a key of TIMESTAMP_KEYS in ``doc``, journal action parameters aside."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key in output.TIMESTAMP_KEYS:
                yield f"{where}.{key}", value
            if key not in output.OPAQUE_KEYS:
                yield from _times(value, f"{where}.{key}")
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield from _times(value, f"{where}[{i}]")


def test_every_json_output_gives_times_as_iso_8601_utc_strings(run, fleet: Store) -> None:
    for node in ("n1", "n2", "gone"):  # members of db; "gone" is absent (no /current entry): first_seen, last_seen
        fleet.add_member("db", node)
    assert run("killswitch", "on", "-m", "freeze").exit_code == 0
    [name] = queued(run("deploy", "db@2", "--json"))
    pinned = run("pin", "n1", "db", "2", "--for", "1h", "-m", "demo")
    assert pinned.exit_code == 0, pinned.output
    assert run("mark", "db", "2", "good", "-m", "fine").exit_code == 0
    assert run("killswitch", "off").exit_code == 0
    fleet.update_deploy(fleet.deploy(name).evolve(state=DONE, finished=fleet.deploy(name).created + 1))
    docs = {" ".join(argv): [json.loads(line) for line in run(*argv).stdout.splitlines() if line.strip()]
            if argv[0] == "rollout" else [json.loads(run(*argv).stdout)]
            for argv in (["status", "--json"], ["deploys", "--all", "--json"], ["nodes", "--json"],
                         ["killswitch", "on", "-m", "again", "--json"], ["history", "--marks", "--json"],
                         ["rollout", "status", name, "--json"], ["pin", "n2", "db", "2", "--forever", "-m", "x",
                                                                 "--json"])}
    seen = {path: value for command, found in docs.items() for i, doc in enumerate(found)
            for path, value in _times(doc, f"{command}#{i}")}
    numbers = {path: value for path, value in seen.items() if isinstance(value, int | float)}
    assert numbers == {}, numbers
    for path, value in seen.items():
        if value is not None:
            assert isinstance(value, str) and datetime.fromisoformat(value).utcoffset() == timedelta(0), (path, value)
    keys = {path.rsplit(".", 1)[1] for path, value in seen.items() if value is not None}
    assert {"created", "finished", "since", "at", "until", "first_seen", "last_seen"} <= keys, keys
    status = docs["status --json"][0]
    assert status["services"][0]["absent"][0]["node"] == "gone"
