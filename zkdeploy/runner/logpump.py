"""The log pump of one managed service: its output pipe into size-rotated files.

A managed service writes its stdout and stderr into a pipe; this process
reads the other end and appends to ``<data>/logs/<service>.log``.  When the
next write would take the file past ``max_bytes`` it is rotated first, like
logging's RotatingFileHandler: ``web.log`` becomes ``web.log.1``, ``.1``
becomes ``.2``, and so on up to ``.<keep>``, the oldest dropped.  Nothing is
copied and nothing truncated, so no line the service wrote is lost.

Why a process of its own and not a thread of the agent: the service must
outlive its agent (a restart of the agent must not touch it), and a pipe
whose reader died kills its writer with SIGPIPE.  The pump runs in a session
of its own (and, in the ``systemd`` launch mode, a scope of its own), ignores
the signals a terminal or a stopping agent sends, and exits when the last
writer closes the pipe (the service and whatever it started have exited).

Guarantees:
- every byte read is written, in order, to some file of the set;
- a file is cut only between lines, except a line longer than ``max_bytes``
  (cut at the limit) or one still open when the limit is reached (a file may
  exceed the limit to finish the line it holds, by at most one read);
- a disk that refuses a write costs those bytes and one message on stderr,
  never the service: the pump goes on reading.

It imports only the standard library, so the agent can run it with
``python -I -S`` (no site-packages: about 10 MB resident): see ``command()``.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

#: bytes read from the pipe at a time
CHUNK = 65536
#: what the pump writes to its stdout once the log file is open (the agent waits for it)
READY = b"ready\n"


class RotatingWriter:
    """Appends to ``path``, rotating it to ``path.1`` .. ``path.<keep>`` before it would exceed ``max_bytes``."""

    def __init__(self, path: Path, max_bytes: int, keep: int) -> None:
        if max_bytes < 1 or keep < 1:
            raise ValueError("max_bytes and keep must be at least 1")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self._fd = -1
        self.size = 0
        self.line_start = True  # the file is empty or ends with a newline
        self.reopen()

    def reopen(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self.size = os.fstat(self._fd).st_size
        self.line_start = True
        if self.size:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                self.line_start = f.read(1) == b"\n"

    def _put(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            done = os.write(self._fd, view)
            view = view[done:]
        self.size += len(data)
        self.line_start = data.endswith(b"\n")

    def rotate(self) -> None:
        """``path`` -> ``path.1`` -> ... -> ``path.<keep>`` (dropped beyond), then a new empty ``path``."""
        os.close(self._fd)
        self._fd = -1
        for n in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
        if self.path.exists():
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self.reopen()

    def write(self, data: bytes) -> None:
        while data:
            room = self.max_bytes - self.size
            if len(data) <= room:
                self._put(data)
                return
            cut = data.rfind(b"\n", 0, max(room, 0)) + 1       # the complete lines that fit
            if cut == 0 and not self.line_start:
                cut = data.find(b"\n") + 1                      # finish the line this file holds
            if cut == 0 and self.size == 0:
                cut = room                                      # one line longer than a whole file
            if cut:
                self._put(data[:cut])
                data = data[cut:]
            if data:
                self.rotate()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def pump(source: int, writer: RotatingWriter, errors: int = 2) -> None:
    """Copy ``source`` into ``writer`` until end of file; a failed write is reported on ``errors``, once
    per kind of failure, and the pump goes on (reopening the file when it can)."""
    reported: set[str] = set()
    while True:
        try:
            data = os.read(source, CHUNK)
        except InterruptedError:
            continue
        if not data:
            return
        try:
            writer.write(data)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if reason not in reported:
                reported.add(reason)
                os.write(errors, f"zkdeploy log pump: {writer.path}: {reason}; output lost until it "
                                  f"can write again\n".encode())
            try:
                writer.close()
                writer.reopen()
            except OSError:
                pass  # still failing: reported above; the next write tries again


def command(logfile: Path, max_bytes: int, keep: int) -> list[str]:
    """The argv that runs the pump of ``logfile`` (reading its stdin)."""
    return [sys.executable, "-I", "-S", str(Path(__file__).resolve()), str(logfile), str(max_bytes), str(keep)]


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        os.write(2, b"usage: logpump.py LOGFILE MAX_BYTES KEEP  (reads the service's output on stdin)\n")
        return 2
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    try:
        os.setsid()
    except OSError:
        pass  # already a session leader (started with start_new_session)
    writer = RotatingWriter(Path(argv[0]), int(argv[1]), int(argv[2]))
    try:
        os.write(1, READY)
    except OSError:
        pass  # the agent stopped waiting for it: pump anyway, the service's output must not block
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # the agent's end of the ready pipe sees end of file: nothing more comes
    os.close(devnull)
    try:
        pump(0, writer)
    finally:
        writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
