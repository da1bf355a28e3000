"""One logging setup for the agent, the seeder and the CLI.

- ``plain``: ``<time> <node> <LEVEL> <logger>: <message>``, tracebacks included;
- ``json``: one object per line with ``ts`` (ISO 8601, UTC), ``level``,
  ``logger``, ``node``, ``msg``, any structured fields a call passed with
  ``extra={"service": ..., "deploy": ...}``, and ``traceback`` when there is one.

The same message repeated within ``REPEAT_WINDOW`` seconds (a ZooKeeper outage
makes the client report every reconnection attempt) is logged once, and the
next line says how many were left out.  The CLI keeps libraries quiet: one
clear line of its own when ZooKeeper cannot be reached, the library's details
only with ``-v``.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any

#: seconds within which the same message from the same logger is logged once
REPEAT_WINDOW = 30.0

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
STRUCTURED = ("service", "deploy", "version", "phase", "change_id")


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the node, the structured fields and the traceback."""

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "node": self.node, "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = record.stack_info
        return json.dumps(out, sort_keys=False)


class RepeatFilter(logging.Filter):
    """Lets the same (logger, message) through once per ``window`` seconds, then says how many were dropped."""

    def __init__(self, window: float = REPEAT_WINDOW) -> None:
        super().__init__()
        self.window = window
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info:
            return True
        key = (record.name, record.getMessage())
        now = time.monotonic()
        with self._lock:
            first, dropped = self._seen.get(key, (0.0, 0))
            if now - first < self.window:
                self._seen[key] = (first, dropped + 1)
                return False
            self._seen[key] = (now, 0)
            if len(self._seen) > 1000:  # bounded: forget the oldest
                for old in sorted(self._seen, key=lambda k: self._seen[k][0])[:500]:
                    del self._seen[old]
        if dropped:
            record.msg = f"{record.msg} (and {dropped} more like it in the last {self.window:.0f}s)"
        return True


def setup(*, fmt: str = "plain", node: str = "-", level: int = logging.INFO, cli: bool = False) -> None:
    """Configure the root logger once for this process (replacing any earlier setup)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(node))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {node} %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # kazoo reports every reconnection attempt; the session's own state changes are logged by zkdeploy
    logging.getLogger("kazoo").setLevel(logging.DEBUG if level <= logging.DEBUG else
                                        logging.CRITICAL if cli else logging.WARNING)
