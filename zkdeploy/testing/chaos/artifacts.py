"""What a chaos run writes to disk: its progress log, the observer's timeline, a copy of the code."""

from __future__ import annotations

import shutil
import sys
import threading
import time
from pathlib import Path

import zkdeploy
from zkdeploy.demo.fleet import LocalFleet
from zkdeploy.demo.observer import Sample


class RunLog:
    """Timestamped progress lines, to the run's log file (and to stderr with --verbose)."""

    def __init__(self, path: Path, verbose: bool) -> None:
        self.path = path
        self.verbose = verbose
        self.t0 = time.time()
        self._lock = threading.Lock()

    def say(self, text: str) -> None:
        line = f"[{time.time() - self.t0:7.2f}] {text}"
        with self._lock, open(self.path, "a") as fh:
            fh.write(line + "\n")
        if self.verbose:
            print(line, file=sys.stderr, flush=True)


def write_timeline(samples: list[Sample], fleet: LocalFleet, t0: float, path: Path) -> None:
    """The probed state at every sample where something changed ('-' = not answering)."""
    hosts = [h.name for h in fleet.hosts]
    lines, previous = [], None
    for s in samples:
        row = tuple(s.answers.get((svc.name, h)) or "-" for svc in fleet.services for h in hosts)
        if row != previous:
            parts = [f"{svc.name}[" + " ".join(s.answers.get((svc.name, h)) or "-" for h in hosts) + "]"
                     for svc in fleet.services]
            lines.append(f"{s.at - t0:+8.2f}s {' '.join(parts)}")
            previous = row
    header = f"# hosts: {' '.join(hosts)}; time relative to the deploy command\n"
    path.write_text(header + "\n".join(lines) + "\n")


def snapshot_code(dest: Path) -> Path:
    """Copy the zkdeploy package under ``dest`` and return the directory to put on PYTHONPATH:
    agents started later (after a kill) then run the same code as the first ones, even while
    the working tree is being edited."""
    package = Path(zkdeploy.__file__).resolve().parent
    shutil.copytree(package, dest / "zkdeploy", ignore=shutil.ignore_patterns("__pycache__"))
    return dest
