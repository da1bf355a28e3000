"""Property: for any sequence of actions, execute then undo leaves the tree byte-for-byte as before.

The tree compared is contents, modes, symlink targets and absent paths.  The
same sequence also runs first in NoAction mode, which must change nothing and
plan what the live run then attempts.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings, strategies as st

from zkdeploy.errors import ZkdeployError
from zkdeploy.journal import Executor, Journal, undo_change
from zkdeploy.journal.model import UNDONE

FILES = ["f0", "f1", "f2", "t0/inner", "t1/inner"]
LINKS = ["l0", "l1"]
DIRS = ["t0", "t1"]
MODES = [0o600, 0o640, 0o644, 0o755]


def snapshot(root: Path) -> dict[str, tuple]:
    state: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st_ = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st_.st_mode):
                state[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st_.st_mode):
                state[rel] = ("dir", stat.S_IMODE(st_.st_mode))
            else:
                state[rel] = ("file", path.read_bytes(), stat.S_IMODE(st_.st_mode))
    return state


contents = st.binary(max_size=64)
initial_trees = st.fixed_dictionaries({
    "files": st.dictionaries(st.sampled_from(FILES[:3]), st.tuples(contents, st.sampled_from(MODES)), max_size=3),
    "links": st.dictionaries(st.sampled_from(LINKS), st.sampled_from(["f0", "t0", "nowhere", "/abs/x"]), max_size=2),
    "dirs": st.dictionaries(
        st.sampled_from(DIRS),
        st.tuples(st.sampled_from([0o700, 0o755]), contents, st.sampled_from(MODES), st.booleans()),
        max_size=2,
    ),
})
operations = st.one_of(
    st.tuples(st.just("write"), st.sampled_from(FILES), contents, st.sampled_from([None, *MODES])),
    st.tuples(st.just("swap"), st.sampled_from(LINKS), st.sampled_from(["f1", "t1", "gone", "../up"])),
    st.tuples(st.just("rmtree"), st.sampled_from(DIRS)),
    st.tuples(st.just("create"), st.integers(0, 2), contents),
)


def build(root: Path, tree: dict[str, Any]) -> None:
    root.mkdir()
    for name, (mode, data, file_mode, with_link) in tree["dirs"].items():
        d = root / name
        (d / "deep").mkdir(parents=True)
        _write(d / "inner", data, file_mode)
        _write(d / "deep" / "leaf", data[::-1], 0o600)
        if with_link:
            (d / "deep" / "up").symlink_to("../inner")
        d.chmod(mode)
    for name, (data, mode) in tree["files"].items():
        _write(root / name, data, mode)
    for name, target in tree["links"].items():
        (root / name).symlink_to(target)


def _write(path: Path, data: bytes, mode: int) -> None:
    path.write_bytes(data)
    path.chmod(mode)


def apply(ex: Executor, root: Path, ops: list[tuple]) -> None:
    """Run ``ops`` as one change set; a refused or failing step ends it (it is then failed)."""
    try:
        with ex.change_set("random") as cs:
            for op in ops:
                if op[0] == "write":
                    cs.write_file(root / op[1], op[2], mode=op[3])
                elif op[0] == "swap":
                    cs.swap_symlink(root / op[1], op[2])
                elif op[0] == "rmtree":
                    cs.remove_tree(root / op[1])
                else:
                    made = root / f"c{op[1]}"
                    script = f"printf '%s' \"$1\" > {made}"
                    cs.run(["sh", "-c", script, "sh", op[2].hex()], undo=["rm", "-f", str(made)], timeout=10)
    except ZkdeployError:
        pass


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=initial_trees, ops=st.lists(operations, min_size=1, max_size=8))
def test_execute_then_undo_restores_the_tree(tree: dict[str, Any], ops: list[tuple]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "host"
        build(root, tree)
        before = snapshot(root)
        db = Path(tmp) / "state" / "journal.db"

        dry = Executor(db, noaction=True)
        apply(dry, root, ops)
        assert snapshot(root) == before
        assert not db.exists()

        with Journal.open(db) as journal:
            live = Executor(journal)
            apply(live, root, ops)
            # NoAction plans against today's tree, so it can only run ahead of a live run that failed.
            assert dry.plan[: len(live.plan)] == live.plan
            undo_change(journal, None, 1)
            assert journal.get_change(1).status == UNDONE
        assert snapshot(root) == before
