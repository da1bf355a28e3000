"""File-system action handlers: file writes, symlink swaps, tree removal, and their undos.

Every execute and every undo here is idempotent and atomic at the level of a
single path (temp + fsync + rename), so replaying one after a crash is safe.
The undo of each is captured *before* the change, as data: the previous
content (a backup blob), mode and owner, the previous symlink target, a tar
of the removed tree, or the fact that nothing was there.
"""

from __future__ import annotations

import os
import shlex
import stat
from pathlib import Path
from typing import Any

from zkdeploy.errors import JournalError
from zkdeploy.fsutil import fsync_dir
from zkdeploy.journal.actions import ActionHandler, action_failed
from zkdeploy.journal.backups import (
    BackupStore,
    atomic_symlink,
    atomic_write,
    extract_tree,
    read_blob,
    remove_path,
    sha256_bytes,
    verify_blob,
)
from zkdeploy.journal.model import NO_UNDO, Action


def _short(sha: str) -> str:
    return sha[:12]


def _owner(params: dict[str, Any]) -> tuple[int, int] | None:
    owner = params.get("owner")
    return None if owner is None else (int(owner[0]), int(owner[1]))


def _wrap_os(what: str, exc: OSError) -> Exception:
    return action_failed(f"{what}: {exc}")


def plan_file_write(
    path: str, content: bytes, mode: int | None, owner: tuple[int, int] | None, backups: BackupStore
) -> dict[str, Any]:
    """The ``file_write`` params for writing ``content`` to ``path`` (no side effects).

    ``mode``/``owner`` None mean "keep the existing file's" (0644 and the
    current user for a new file), resolved when the write runs, so the params
    do not depend on the tree at planning time.
    """
    target = Path(os.path.abspath(path))
    if target.is_symlink():
        raise JournalError(f"{target} is a symlink; use swap_symlink or write its target")
    if target.exists() and not target.is_file():
        raise JournalError(f"{target} exists and is not a regular file")
    if not target.parent.is_dir():
        raise JournalError(f"cannot write {target}: directory {target.parent} does not exist")
    sha = sha256_bytes(content)
    return {
        "path": str(target),
        "sha256": sha,
        "content_file": str(backups.path_for(sha)),
        "size": len(content),
        "mode": None if mode is None else int(mode),
        "owner": None if owner is None else [int(owner[0]), int(owner[1])],
    }


def _resolve_mode_owner(path: Path, params: dict[str, Any]) -> tuple[int, tuple[int, int] | None]:
    mode, owner = params.get("mode"), _owner(params)
    if mode is None or owner is None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return (0o644 if mode is None else mode), owner
        mode = stat.S_IMODE(st.st_mode) if mode is None else mode
        owner = (st.st_uid, st.st_gid) if owner is None else owner
    return mode, owner


class FileWriteHandler(ActionHandler):
    """``file_write``: params ``path``, ``sha256``, ``content_file``, ``size``, ``mode``, ``owner``."""

    kind = "file_write"

    def describe(self, params: dict[str, Any]) -> str:
        owner = f", owner {params['owner'][0]}:{params['owner'][1]}" if params.get("owner") else ""
        mode = "mode kept" if params.get("mode") is None else f"mode {params['mode']:04o}"
        return f"write {params['path']} ({params['size']} bytes, sha256 {_short(params['sha256'])}, {mode}{owner})"

    def execute(self, params: dict[str, Any], noaction: bool) -> Any:
        if noaction:
            return None
        data = read_blob(Path(params["content_file"]), params["sha256"])
        path = Path(params["path"])
        try:
            mode, owner = _resolve_mode_owner(path, params)
            atomic_write(path, data, mode, owner)
        except OSError as exc:
            raise _wrap_os(self.describe(params), exc) from exc
        return {"sha256": params["sha256"]}

    def capture_undo(self, params: dict[str, Any], backups: BackupStore) -> Action:
        path = Path(params["path"])
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise JournalError(f"{path} is not a regular file")
        if not path.exists():
            undo = {"path": str(path), "existed": False}
        else:
            st = path.stat()
            sha = backups.put_file(path)
            undo = {
                "path": str(path),
                "existed": True,
                "sha256": sha,
                "backup_file": str(backups.path_for(sha)),
                "mode": stat.S_IMODE(st.st_mode),
                "owner": [st.st_uid, st.st_gid],
            }
        return Action("file_restore", undo, FileRestoreHandler().describe(undo))

    def targets(self, params: dict[str, Any]) -> list[str]:
        return [params["path"]]

    def manual_steps(self, params: dict[str, Any]) -> list[str]:
        path = shlex.quote(params["path"])
        line = f"cp {shlex.quote(params['content_file'])} {path}"
        if params.get("mode") is not None:
            line += f" && chmod {params['mode']:04o} {path}"
        return [line]


class FileRestoreHandler(ActionHandler):
    """``file_restore`` (undo of ``file_write``): put back the old content, mode and owner,
    or remove the file when it did not exist."""

    kind = "file_restore"
    undo_after_failure = True

    def describe(self, params: dict[str, Any]) -> str:
        if not params["existed"]:
            return f"remove {params['path']} (it did not exist before)"
        return (
            f"restore {params['path']} from backup {_short(params['sha256'])}"
            f" (mode {params['mode']:04o}, owner {params['owner'][0]}:{params['owner'][1]})"
        )

    def execute(self, params: dict[str, Any], noaction: bool) -> Any:
        path = Path(params["path"])
        if noaction:
            return None
        try:
            if params["existed"]:
                data = read_blob(Path(params["backup_file"]), params["sha256"])
                atomic_write(path, data, params["mode"], _owner(params))
            elif path.is_symlink() or path.is_file():
                path.unlink()
                fsync_dir(path.parent)
        except OSError as exc:
            raise _wrap_os(self.describe(params), exc) from exc
        return None

    def targets(self, params: dict[str, Any]) -> list[str]:
        return [params["path"]]

    def manual_steps(self, params: dict[str, Any]) -> list[str]:
        path = shlex.quote(params["path"])
        if not params["existed"]:
            return [f"rm -f {path}"]
        uid, gid = params["owner"]
        return [
            f"cp {shlex.quote(params['backup_file'])} {path} && chmod {params['mode']:04o} {path}"
            f" && chown {uid}:{gid} {path}"
        ]


class SymlinkSwapHandler(ActionHandler):
    """``symlink_swap``: params ``link``, ``target``; atomically repoints (or creates) ``link``."""

    kind = "symlink_swap"

    def describe(self, params: dict[str, Any]) -> str:
        return f"point symlink {params['link']} at {params['target']}"

    def execute(self, params: dict[str, Any], noaction: bool) -> Any:
        link = Path(params["link"])
        if os.path.lexists(link) and not link.is_symlink():
            raise action_failed(f"{self.describe(params)}: {link} exists and is not a symlink")
        if noaction:
            return None
        try:
            atomic_symlink(link, params["target"])
        except OSError as exc:
            raise _wrap_os(self.describe(params), exc) from exc
        return None

    def capture_undo(self, params: dict[str, Any], backups: BackupStore) -> Action:
        link = Path(params["link"])
        if link.is_symlink():
            undo = {"link": str(link), "existed": True, "target": os.readlink(link)}
        elif os.path.lexists(link):
            raise JournalError(f"{link} exists and is not a symlink")
        else:
            undo = {"link": str(link), "existed": False}
        return Action("symlink_restore", undo, SymlinkRestoreHandler().describe(undo))

    def targets(self, params: dict[str, Any]) -> list[str]:
        return [params["link"]]

    def manual_steps(self, params: dict[str, Any]) -> list[str]:
        return [f"ln -sfn {shlex.quote(params['target'])} {shlex.quote(params['link'])}"]


class SymlinkRestoreHandler(ActionHandler):
    """``symlink_restore`` (undo of ``symlink_swap``): point ``link`` back, or remove it."""

    kind = "symlink_restore"
    undo_after_failure = True

    def describe(self, params: dict[str, Any]) -> str:
        if not params["existed"]:
            return f"remove symlink {params['link']} (it did not exist before)"
        return f"point symlink {params['link']} back at {params['target']}"

    def execute(self, params: dict[str, Any], noaction: bool) -> Any:
        link = Path(params["link"])
        if noaction:
            return None
        try:
            if params["existed"]:
                atomic_symlink(link, params["target"])
            elif link.is_symlink():
                link.unlink()
                fsync_dir(link.parent)
        except OSError as exc:
            raise _wrap_os(self.describe(params), exc) from exc
        return None

    def targets(self, params: dict[str, Any]) -> list[str]:
        return [params["link"]]

    def manual_steps(self, params: dict[str, Any]) -> list[str]:
        link = shlex.quote(params["link"])
        if not params["existed"]:
            return [f"rm -f {link}"]
        return [f"ln -sfn {shlex.quote(params['target'])} {link}"]


class RemoveTreeHandler(ActionHandler):
    """``remove_tree``: params ``path``, ``backup`` (tar the tree first so it can be undone)."""

    kind = "remove_tree"

    def describe(self, params: dict[str, Any]) -> str:
        return f"remove directory tree {params['path']}" + ("" if params.get("backup", True) else " (no backup)")

    def execute(self, params: dict[str, Any], noaction: bool) -> Any:
        path = Path(params["path"])
        if os.path.lexists(path) and (path.is_symlink() or not path.is_dir()):
            raise action_failed(f"{self.describe(params)}: {path} is not a directory")
        if noaction:
            return None
        try:
            remove_path(path)
        except OSError as exc:
            raise _wrap_os(self.describe(params), exc) from exc
        return None

    def capture_undo(self, params: dict[str, Any], backups: BackupStore) -> Action:
        path = Path(params["path"])
        if not params.get("backup", True):
            return Action(NO_UNDO, {"reason": "removed without a backup", "of": self.describe(params)},
                          "cannot be undone automatically: removed without a backup")
        if not os.path.lexists(path):
            undo: dict[str, Any] = {"path": str(path), "existed": False}
        elif path.is_symlink() or not path.is_dir():
            raise JournalError(f"{path} is not a directory")
        else:
            sha = backups.put_tree(path)
            undo = {"path": str(path), "existed": True, "sha256": sha, "archive": str(backups.path_for(sha))}
        return Action("tree_restore", undo, TreeRestoreHandler().describe(undo))

    def targets(self, params: dict[str, Any]) -> list[str]:
        return [params["path"]]

    def manual_steps(self, params: dict[str, Any]) -> list[str]:
        return [f"rm -rf {shlex.quote(params['path'])}"]


class TreeRestoreHandler(ActionHandler):
    """``tree_restore`` (undo of ``remove_tree``): recreate the tree from its tar backup."""

    kind = "tree_restore"
    undo_after_failure = True

    def describe(self, params: dict[str, Any]) -> str:
        if not params["existed"]:
            return f"nothing to restore ({params['path']} did not exist)"
        return f"restore directory tree {params['path']} from backup {_short(params['sha256'])}"

    def execute(self, params: dict[str, Any], noaction: bool) -> Any:
        if noaction or not params["existed"]:
            return None
        archive = verify_blob(Path(params["archive"]), params["sha256"])
        try:
            extract_tree(archive, Path(params["path"]))
        except OSError as exc:
            raise _wrap_os(self.describe(params), exc) from exc
        return None

    def targets(self, params: dict[str, Any]) -> list[str]:
        return [params["path"]]

    def manual_steps(self, params: dict[str, Any]) -> list[str]:
        if not params["existed"]:
            return []
        path = Path(params["path"])
        return [
            f"rm -rf {shlex.quote(str(path))} && tar -xpf {shlex.quote(params['archive'])}"
            f" -C {shlex.quote(str(path.parent))}"
        ]
