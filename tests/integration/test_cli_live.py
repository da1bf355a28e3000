"""The live views through a pipe, against a real ZooKeeper (issue 14): ``deploy --wait`` and
``rollout status`` as a CI job sees them, one plain line per change or one JSON document per line.
The command runs as a process; the test moves stand-in agents' /current entries and the deploy
entry only after the command has printed what it saw before, so every line is one change."""

from __future__ import annotations

import io
import json
import os
import queue
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from zkdeploy.cli.main import cli
from zkdeploy.coordination import Store
from zkdeploy.model import DONE, ONLINE, CurrentEntry

pytestmark = pytest.mark.integration

#: a bound on waiting for the command's next line (never an expectation of how long it takes)
PATIENCE = 60.0

CATALOG = "services:\n  db:\n    quorum: 1\n    start: \"sleep 100\"\n"


class Follower:
    """A zkdeploy command run as a process, its stdout read line by line as it comes."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "COLUMNS": "80"})
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def until(self, fragment: str) -> str:
        """Read lines until one holds ``fragment``; that line."""
        while True:
            try:
                line = self.lines.get(timeout=PATIENCE)
            except queue.Empty:
                raise AssertionError(f"no line with {fragment!r} within {PATIENCE:g}s; so far: {self.seen}") from None
            if line is None:
                assert self.proc.stderr is not None
                raise AssertionError(f"the command ended without a line with {fragment!r}: {self.seen}, "
                                     f"stderr: {self.proc.stderr.read()}")
            self.seen.append(line)
            if fragment in line:
                return line

    def finish(self) -> tuple[int, list[str], str]:
        """Its exit code, every line it printed, and its stderr."""
        code = self.proc.wait(timeout=PATIENCE)
        while (line := self.lines.get(timeout=PATIENCE)) is not None:
            self.seen.append(line)
        assert self.proc.stderr is not None
        return code, self.seen, self.proc.stderr.read()


@pytest.fixture
def fleet(zk_hosts: str, zk_root: str, store: Store, tmp_path: Path) -> Iterator[list[str]]:
    """db (quorum 1) on three stand-in agents at version 1, version 2 staged; yields the CLI's argv."""
    base = [sys.executable, "-m", "zkdeploy", "--zk", zk_hosts, "--root", zk_root]
    runner = CliRunner()
    (tmp_path / "services.yaml").write_text(CATALOG)
    assert runner.invoke(cli, [*base[3:], "services", "apply", str(tmp_path / "services.yaml")]).exit_code == 0
    for i in range(3):
        store.publish_current("db", CurrentEntry(node=f"n{i}", version="1", state=ONLINE))
    path = tmp_path / "db-2.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("VERSION")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"2\n"))
    assert runner.invoke(cli, [*base[3:], "stage", "db", "2", str(path), "--no-torrent"]).exit_code == 0
    yield base


def test_deploy_wait_into_a_pipe_prints_a_plain_line_per_change(fleet: list[str], store: Store) -> None:
    follow = Follower([*fleet, "deploy", "db@2", "--wait"])
    first = follow.until("db d-")
    assert " pending 0/3 at 2" in first and "elapsed" in first
    store.publish_current("db", CurrentEntry(node="n0", version="1", state="restarting", phase="starting",
                                             detail="waiting for the health checks"))
    assert follow.until("  db n1: ").endswith("db n1: 1 online, not restarted yet")
    line = follow.until("  db n0: 1 restarting")
    assert line.endswith("db n0: 1 restarting, starting: waiting for the health checks")
    store.publish_current("db", CurrentEntry(node="n0", version="2", state=ONLINE))
    assert " pending 1/3 at 2" in follow.until(" pending 1/3")
    [entry] = store.deploys()
    store.update_deploy(entry.evolve(state=DONE, finished=entry.created + 5))
    code, lines, err = follow.finish()
    assert code == 0, (lines, err)
    assert lines[-1] == f"rollout complete: db@2 done ({entry.name})"
    assert not any("\x1b" in line for line in lines)  # no escape codes into a pipe
    body = [line.split(" ", 1)[1] for line in lines if line[:2].isdigit()]  # the view's lines, without the clock
    assert len(body) == len(set(body)), lines  # each printed once: only changes are printed


def test_rollout_status_json_is_one_document_per_line_ending_with_the_outcome(fleet: list[str],
                                                                              store: Store) -> None:
    runner = CliRunner()
    queued = json.loads(runner.invoke(cli, [*fleet[3:], "deploy", "db@2", "--json"]).stdout)["queued"]
    name = queued[0]["name"]
    follow = Follower([*fleet, "rollout", "status", str(int(name.removeprefix("d-"))), "--json",
                       "--interval", "0.2"])
    first = json.loads(follow.until('"deploys"'))
    assert [(d["deploy"], d["state"], d["done"], d["total"]) for d in first["deploys"]] == [(name, "pending", 0, 3)]
    assert first["at"].endswith("+00:00") and first["deploys"][0]["created"].endswith("+00:00")
    for i in range(3):
        store.publish_current("db", CurrentEntry(node=f"n{i}", version="2", state=ONLINE))
        assert json.loads(follow.until(f'"done":{i + 1}'))["deploys"][0]["done"] == i + 1
    entry = store.deploy(name)
    store.update_deploy(entry.evolve(state=DONE, finished=entry.created + 5))
    code, lines, err = follow.finish()
    assert code == 0, (lines, err)
    docs = [json.loads(line) for line in lines]  # every line is one JSON document
    assert docs[-1]["name"] == name and docs[-1]["state"] == "done" and docs[-1]["progress"] == {"done": 3, "total": 3}
    assert [d["deploys"][0]["done"] for d in docs[:-1] if d["deploys"][0]["state"] == "pending"] == [0, 1, 2, 3]
