"""The live views in a real terminal (issue 14): ``status --watch`` and ``deploy --wait`` run inside
tmux against a fleet of agents on a real ZooKeeper, and the test reads the screen a person sees
(``tmux capture-pane -p``): the progress bars, one line per service, the node that holds the
rollout back and why, and the outcome.  The pane is polled until the expected text appears (or a
generous bound passes); nothing is asserted about time.

The rollout is made to stand still where the screen is read: the killswitch holds it queued, then
a stopped agent (an absent member, with quorum 3 of 4) holds db back until it comes back.
"""

from __future__ import annotations

import re
import shlex
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import FleetHarness, wait_for

pytestmark = pytest.mark.e2e

#: how long the screen may take to show what is expected (a bound, never an expectation)
PATIENCE = 120.0
#: what a window's shell prints when its command exited, before the status
EXITED = "[exited with status"


class Tmux:
    """A private tmux server (its own socket, so no other session is touched) whose windows are
    80 by 24, a standard terminal."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self.tmux("-f", "/dev/null", "new-session", "-d", "-s", "t", "-n", "idle", "-x", "80", "-y", "24",
                  "sleep 3600")
        self.tmux("set-option", "-g", "default-size", "80x24")

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-S", str(self.socket), *args], check=True, capture_output=True, text=True,
                              timeout=30).stdout

    def run(self, window: str, argv: list[str]) -> None:
        """Run ``argv`` in a new window, under bash as a person's shell would; when it exits, bash
        prints its exit status (it waits for it, as a shell does: no reliance on tmux reaping it;
        Ctrl-C reaches both, and bash goes on only if the command exited rather than died of it)."""
        script = f'{shlex.join(argv)}; echo "{EXITED} $?]"; exec sleep 3600'
        self.tmux("new-window", "-d", "-t", "t", "-n", window, shlex.join(["bash", "-c", script]))

    def screen(self, window: str, history: bool = False) -> str:
        """What the pane shows now (with ``history``, the lines scrolled off it too)."""
        return self.tmux("capture-pane", "-p", "-t", f"t:{window}", *(("-S", "-") if history else ()))

    def wait_for(self, window: str, *texts: str, absent: tuple[str, ...] = ()) -> str:
        """Poll the pane until it shows every one of ``texts`` and none of ``absent``; the screen."""
        seen = {"screen": ""}

        def shows() -> bool:
            seen["screen"] = self.screen(window)
            return all(t in seen["screen"] for t in texts) and not any(t in seen["screen"] for t in absent)

        try:
            wait_for(shows, PATIENCE, f"{window} to show {texts}", interval=0.2)
        except AssertionError:
            raise AssertionError(f"the {window} pane never showed {texts}; it shows:\n{seen['screen']}") from None
        return seen["screen"]

    def exit_status(self, window: str) -> int:
        """Wait until the pane's command has exited; its exit status, as its shell printed it."""
        screen = self.wait_for(window, EXITED)
        return int(re.findall(r"\[exited with status (\d+)\]", screen)[-1])

    def close(self) -> None:
        subprocess.run(["tmux", "-S", str(self.socket), "kill-server"], capture_output=True, timeout=30)


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        pytest.fail("this test runs the CLI in a real terminal and needs tmux: apt-get install -y tmux "
                    "(scripts/setup installs it)")
    # a short socket path: tmp_path can be longer than a unix socket's address allows
    terminal = Tmux(Path("/tmp") / f"zkdeploy-tmux-{uuid.uuid4().hex[:10]}")
    yield terminal
    terminal.close()
    terminal.socket.unlink(missing_ok=True)


def zkdeploy(harness: FleetHarness, *args: str) -> list[str]:
    fleet = harness.fleet
    return [sys.executable, "-m", "zkdeploy", "--zk", fleet.zk_hosts, "--root", fleet.zk_root, *args]


def bar_row(screen: str, service: str) -> str:
    """The line of ``service`` in a live view's table (it starts with the service's name)."""
    rows = [line for line in screen.splitlines() if line.startswith(f"{service} ")]
    assert rows, screen
    return rows[0]


@pytest.mark.timeout(420)
def test_status_watch_and_deploy_wait_redraw_in_place_in_a_real_terminal(make_fleet, tmux: Tmux) -> None:
    harness = make_fleet(size=4)  # db and web, quorum 3 of 4: one node restarts at a time
    harness.install("1")
    for service in ("db", "web"):
        harness.stage(service, "2")
    fleet, store = harness.fleet, harness.store
    fleet.cli("killswitch", "on", "-m", "hold for the test")

    tmux.run("status", zkdeploy(harness, "status", "--watch", "--interval", "0.3"))
    tmux.run("deploy", zkdeploy(harness, "deploy", "db@2", "web@2", "--wait"))

    # held by the killswitch: both views show it, a bar and a line per service, nothing moved
    screen = tmux.wait_for("deploy", "zkdeploy deploy --wait", "KILLSWITCH ON: hold for the test",
                           "stopped by the killswitch")
    assert "PROGRESS" in screen and "ELAPSED" in screen and "LEFT" in screen
    db, web = bar_row(screen, "db"), bar_row(screen, "web")
    assert "pending" in db and "0/4" in db and "━" in db
    assert "pending" in web and "0/4" in web
    assert "db: stopped by the killswitch: hold for the test" in screen and "web: queued behind db@2" in screen
    screen = tmux.wait_for("status", "zkdeploy status --watch", "KILLSWITCH ON: hold for the test",
                           "db: stopped by the killswitch")
    assert "pending" in bar_row(screen, "db") and "0/4" in bar_row(screen, "db")

    # an agent stops: its node is an absent member, and with quorum 3 of 4 nothing may restart;
    # both views name the node and why it holds the rollout back
    victim = fleet.hosts[-1]
    fleet.kill_agent(victim, signal.SIGKILL)
    wait_for(lambda: victim.name not in store.current("db"), 60, f"{victim.name}'s session to expire")
    fleet.cli("killswitch", "off")
    for window in ("deploy", "status"):
        screen = tmux.wait_for(window, "absent (its agent is not registered)", absent=("KILLSWITCH ON",))
        assert any(line.split()[:1] == [victim.name] and "absent" in line for line in screen.splitlines()), screen

    # it comes back: the rollout goes through, the deploy view ends with its outcome, exit 0
    fleet.start_agent(victim)
    screen = tmux.wait_for("deploy", "rollout complete: db@2 done", "web@2 done")
    assert tmux.exit_status("deploy") == 0
    db, web = bar_row(screen, "db"), bar_row(screen, "web")
    assert "done" in db and "4/4" in db and "━" in db
    assert "done" in web and "4/4" in web
    history = tmux.screen("deploy", history=True)
    assert history.count("zkdeploy deploy --wait (Ctrl-C stops watching)") == 1, history  # redrawn, not scrolled
    assert "Traceback" not in history

    screen = tmux.wait_for("status", "no rollout under way", absent=("pending",))
    for service in ("db", "web"):
        row = bar_row(screen, service)
        assert row.split()[:2] == [service, "2"] and "idle" in row and "4/4" in row, row
    assert tmux.screen("status", history=True).count("zkdeploy status --watch (Ctrl-C to stop)") == 1

    # Ctrl-C is the way out of --watch: not an error
    tmux.tmux("send-keys", "-t", "t:status", "C-c")
    assert tmux.exit_status("status") == 0
