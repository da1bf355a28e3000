"""Action handlers: the contract every action kind follows, and the built-in non-file kinds.

A handler turns recorded data (``params``) into a change.  The contract:

* ``describe(params) -> str``: one human line, no side effects;
* ``execute(params, noaction) -> result``: make the change, or with
  ``noaction=True`` make none at all; return a JSON-able result (or None);
  raise a :class:`~zkdeploy.errors.ZkdeployError` kind when it fails;
* ``capture_undo(params, backups) -> Action | None`` (optional): called in live
  mode *before* the task is recorded; records whatever the undo needs (a
  backup of the old file, the old symlink target) and returns the undo action.
  Handlers without it need the caller to give an explicit undo;
* ``targets(params)``: the paths the action writes (for ``blame``);
* ``manual_steps(params)``: shell-ish lines an operator could type instead.

Handlers of file-system kinds are idempotent: running execute or its undo
twice leaves the same tree as running it once, which is what lets
:func:`~zkdeploy.journal.undo.recover` replay an interrupted task.

The registry of kinds lives in :mod:`zkdeploy.journal.registry`, which
imports this module and :mod:`zkdeploy.journal.fileactions`.
"""

from __future__ import annotations

import importlib
import json
import shlex
from typing import Any, ClassVar

from zkdeploy.errors import JournalError, ServiceError, ZkdeployError
from zkdeploy.journal.backups import BackupStore
from zkdeploy.journal.model import CANNOT_UNDO_TEXT, NO_UNDO, NOOP, Action
from zkdeploy.runner.commands import run_bounded

_OUTPUT_TAIL = 2000


def action_failed(message: str) -> ZkdeployError:
    """The exception a failing action raises (one place to change its kind)."""
    return ServiceError(message)


class ActionHandler:
    """Base class of handlers; subclasses set ``kind`` and override what they need."""

    kind: ClassVar[str] = ""
    #: True when running the undo is safe even if execute failed part-way.
    undo_after_failure: ClassVar[bool] = False

    def describe(self, params: dict[str, Any]) -> str:
        return f"{self.kind} {json.dumps(params, sort_keys=True)}"

    def execute(self, params: dict[str, Any], noaction: bool) -> Any:
        raise NotImplementedError

    def capture_undo(self, params: dict[str, Any], backups: BackupStore) -> Action | None:
        return None

    def targets(self, params: dict[str, Any]) -> list[str]:
        return []

    def manual_steps(self, params: dict[str, Any]) -> list[str]:
        return [f"# by hand: {self.describe(params)}"]


# -- process helpers --------------------------------------------------------

def command_text(params: dict[str, Any]) -> str:
    """The command of ``command``-like params as a shell line."""
    if params.get("shell") is not None:
        return str(params["shell"])
    return shlex.join(params["argv"])


def run_process(params: dict[str, Any], what: str) -> dict[str, Any]:
    """Run the argv (or, with ``shell``, the shell string) in ``params`` with its timeout.

    Guarantees (see :func:`zkdeploy.runner.commands.run_bounded`): the whole
    process group is killed on timeout (StepTimeoutError) and the call never
    waits on a process that escaped it; a non-zero exit raises the
    action-failed error with the tail of stderr; success returns the exit
    code and output tails.
    """
    timeout = float(params.get("timeout", 60))
    if params.get("shell") is not None:
        argv = ["/bin/sh", "-c", str(params["shell"])]
    else:
        argv = [str(a) for a in params["argv"]]
    env = {str(k): str(v) for k, v in (params.get("env") or {}).items()}
    try:
        done = run_bounded(argv, timeout=timeout, what=what, env=env, cwd=params.get("cwd"))
    except OSError as exc:
        raise action_failed(f"{what}: cannot run {command_text(params)}: {exc}") from exc
    stderr = done.stderr.decode(errors="replace")[-_OUTPUT_TAIL:]
    if done.returncode != 0:
        raise action_failed(f"{what}: {command_text(params)} exited with {done.returncode}: {stderr.strip()[-500:]}")
    return {"returncode": done.returncode, "stdout": done.stdout.decode(errors="replace")[-_OUTPUT_TAIL:],
            "stderr": stderr}


# -- handlers ----------------------------------------------------------------

class CommandHandler(ActionHandler):
    """``command``: params ``argv`` (list) or ``shell`` (string), ``timeout``, ``cwd``, ``env``.

    Re-running a command is only as idempotent as the command; recovery of an
    interrupted command re-runs it (policy ``complete``) or runs its undo.
    """

    kind = "command"

    def describe(self, params: dict[str, Any]) -> str:
        return f"run {command_text(params)}"

    def execute(self, params: dict[str, Any], noaction: bool) -> Any:
        if noaction:
            return None
        return run_process(params, self.describe(params))

    def manual_steps(self, params: dict[str, Any]) -> list[str]:
        return [command_text(params)]


def _resolve(func: str) -> Any:
    module_name, sep, attr = func.partition(":")
    if not sep or not module_name or not attr:
        raise JournalError(f"python action needs 'module:function', got {func!r}")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise JournalError(f"cannot import python action {func!r}: {exc}") from exc
    if not callable(target):
        raise JournalError(f"python action {func!r} is not callable")
    return target


class PythonHandler(ActionHandler):
    """``python``: params ``func`` ("module:function") and ``args`` (JSON list or dict)."""

    kind = "python"

    def describe(self, params: dict[str, Any]) -> str:
        return f"call {params['func']}({json.dumps(params.get('args', []), sort_keys=True)})"

    def execute(self, params: dict[str, Any], noaction: bool) -> Any:
        func = _resolve(params["func"])
        if noaction:
            return None
        args = params.get("args", [])
        try:
            result = func(**args) if isinstance(args, dict) else func(*args)
        except ZkdeployError:
            raise
        except Exception as exc:
            raise action_failed(f"{self.describe(params)} failed: {type(exc).__name__}: {exc}") from exc
        try:
            json.dumps(result)
        except (TypeError, ValueError):
            return repr(result)
        return result

    def manual_steps(self, params: dict[str, Any]) -> list[str]:
        module_name, _, attr = params["func"].partition(":")
        args = params.get("args", [])
        call = f"**{args!r}" if isinstance(args, dict) else f"*{args!r}"
        code = f"import importlib; importlib.import_module({module_name!r}).{attr}({call})"
        return [f"python3 -c {shlex.quote(code)}"]


class NoUndoHandler(ActionHandler):
    """``no_undo``: the marker of a change that cannot be undone automatically."""

    kind = NO_UNDO

    def describe(self, params: dict[str, Any]) -> str:
        reason = params.get("reason")
        return f"{CANNOT_UNDO_TEXT}" + (f": {reason}" if reason else "")

    def execute(self, params: dict[str, Any], noaction: bool) -> Any:
        raise JournalError(f"this change {CANNOT_UNDO_TEXT}")

    def manual_steps(self, params: dict[str, Any]) -> list[str]:
        return [f"NO AUTOMATIC UNDO: {params.get('of', 'this step')} {CANNOT_UNDO_TEXT}; back it out by hand"]


class NoopHandler(ActionHandler):
    """``noop``: nothing to undo (the step changed nothing)."""

    kind = NOOP
    undo_after_failure = True

    def describe(self, params: dict[str, Any]) -> str:
        return "nothing to undo"

    def execute(self, params: dict[str, Any], noaction: bool) -> Any:
        return None

    def manual_steps(self, params: dict[str, Any]) -> list[str]:
        return []
