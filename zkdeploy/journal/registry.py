"""The registry that maps an action ``kind`` to its handler, and the built-in kinds.

It sits above the handler modules (:mod:`~zkdeploy.journal.actions`,
:mod:`~zkdeploy.journal.fileactions`), which never import it.  The registry
is open: the agent registers the one way to start and stop a service
(``zkdeploy.service_start``, ``zkdeploy.service_stop``, ``zkdeploy.hooks``, in
zkdeploy/agent/host_actions.py) with ``registry.register(handler)``.
"""

from __future__ import annotations

from typing import Any

import zkdeploy.journal.fileactions as fileactions
from zkdeploy.errors import JournalError
from zkdeploy.journal.actions import (
    ActionHandler,
    CommandHandler,
    NoopHandler,
    NoUndoHandler,
    PythonHandler,
)


class Registry:
    """Handlers by kind.  ``get`` of an unknown kind raises JournalError."""

    def __init__(self, handlers: list[ActionHandler] | None = None) -> None:
        self._handlers: dict[str, ActionHandler] = {}
        for handler in handlers or []:
            self.register(handler)

    def register(self, handler: ActionHandler, *, replace: bool = False) -> None:
        """Add ``handler`` under ``handler.kind``; refuse to shadow one unless ``replace``."""
        if not handler.kind:
            raise JournalError(f"handler {handler!r} has no kind")
        if handler.kind in self._handlers and not replace:
            raise JournalError(f"a handler for action kind {handler.kind!r} is already registered")
        self._handlers[handler.kind] = handler

    def get(self, kind: str) -> ActionHandler:
        try:
            return self._handlers[kind]
        except KeyError:
            raise JournalError(f"no handler registered for action kind {kind!r}") from None

    def __contains__(self, kind: object) -> bool:
        return kind in self._handlers

    def kinds(self) -> list[str]:
        return sorted(self._handlers)

    def describe(self, kind: str, params: dict[str, Any]) -> str:
        return self.get(kind).describe(params)


def default_registry() -> Registry:
    """A fresh registry with every built-in kind (callers may register more)."""
    return Registry(
        [
            fileactions.FileWriteHandler(),
            fileactions.FileRestoreHandler(),
            fileactions.SymlinkSwapHandler(),
            fileactions.SymlinkRestoreHandler(),
            fileactions.RemoveTreeHandler(),
            fileactions.TreeRestoreHandler(),
            CommandHandler(),
            PythonHandler(),
            NoUndoHandler(),
            NoopHandler(),
        ]
    )
