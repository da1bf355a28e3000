"""The work the journal crash tests interrupt: a five-task change set, or the undo of it.

Run as a child process (``python -m tests.unit.crashy ROOT DB MODE``) with
``ZKDEPLOY_CRASH_AT`` armed, it dies by SIGKILL; called in-process under
``zkdeploy.crash.installed(raise_at(...))`` it stops with SimulatedCrash.
Both must leave the same journal behind.
"""

from __future__ import annotations

import sys
from pathlib import Path

from zkdeploy.journal import Executor, Journal, undo_change


def work(root: Path, db: Path, mode: str) -> None:
    with Journal.open(db) as journal:
        if mode == "undo":
            undo_change(journal, None, 1)
            return
        with Executor(journal).change_set("crashy", deploy_id="d-1") as cs:
            cs.write_file(root / "etc" / "a.conf", b"a2\n", mode=0o600)
            cs.write_file(root / "etc" / "b.conf", b"b1\n")
            cs.swap_symlink(root / "current", "releases/2")
            cs.run(["touch", str(root / "flag")], undo=["rm", "-f", str(root / "flag")], timeout=10)
            cs.remove_tree(root / "releases" / "0")


if __name__ == "__main__":
    work(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])
