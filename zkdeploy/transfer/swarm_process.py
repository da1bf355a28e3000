"""The agent's side of its swarm worker process (``zkdeploy.transfer.worker``).

``SwarmProcess`` offers what the transport uses of a swarm session (start, seed, download,
status, close) and runs the session in a child process, so the agent itself never loads
libtorrent: the child is started when there is something to fetch or a fetcher wakes this holder,
and stopped when it says it has been idle.  Every request has a timeout; a child that dies fails
whatever waits on it with ``SwarmLost`` (the transport then fetches from the origin), and a child
whose agent dies sees its stdin end and exits.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import zkdeploy
from zkdeploy.errors import PayloadError
from zkdeploy.transfer.metainfo import TorrentMeta
from zkdeploy.transfer.swarm_config import (
    ERROR_KINDS,
    Endpoint,
    PeersProvider,
    SwarmConfig,
    SwarmLost,
    TransferStatus,
    config_to_json,
)

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 30.0  # seed, stop_seeding, status: a live worker answers at once
EXIT_TIMEOUT = 10.0     # the worker saves resume data and closes its session


@dataclass
class _Pending:
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: PayloadError | None = None
    on_progress: Callable[[TransferStatus], None] | None = None


class SwarmProcess:
    """A swarm session in a child process, started and stopped by its owner."""

    def __init__(self, config: SwarmConfig, *, idle_stop: float = 0.0, node: str = "-",
                 on_idle: Callable[[], None] | None = None, on_exit: Callable[[int | None], None] | None = None,
                 python: str = sys.executable) -> None:
        self.config = config
        self.idle_stop = idle_stop
        self.node = node
        self.on_idle = on_idle
        self.on_exit = on_exit
        self.python = python
        self._proc: subprocess.Popen[str] | None = None
        self._endpoint: Endpoint | None = None
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count(1)
        self._peers_changed = threading.Condition()
        self._peers_generation = 0

    # -- lifecycle ------------------------------------------------------------------
    @property
    def running(self) -> bool:
        proc = self._proc
        return proc is not None and proc.poll() is None and self._endpoint is not None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> Endpoint:
        """Start the worker and wait until its session listens; PayloadError if it cannot."""
        with self._lock:
            if self.running:
                assert self._endpoint is not None
                return self._endpoint
            spec = {"config": config_to_json(self.config), "idle_stop": self.idle_stop, "node": self.node}
            proc = subprocess.Popen(
                [self.python, "-m", "zkdeploy.transfer.worker", json.dumps(spec)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, close_fds=True,
                env=_worker_env())
            assert proc.stdout is not None
            first = _read_line(proc.stdout, self.config.start_timeout + 20.0)
            event = _parse(first)
            if event is None or event.get("event") != "listening":
                _stop(proc)
                if event is not None:
                    why = str(event.get("message"))
                elif first is None:
                    why = f"it exited with status {proc.returncode} (its error is in the agent's log)"
                else:
                    why = f"it said {first.strip()[:200]!r}"
                raise PayloadError(f"the swarm worker did not start: {why}")
            self._proc, self._endpoint = proc, (str(event["ip"]), int(event["port"]))
            threading.Thread(target=self._read, args=(proc,), name="swarm-worker-reader", daemon=True).start()
            log.info("swarm worker %d listening on %s:%d", proc.pid, *self._endpoint)
            return self._endpoint

    @property
    def listen_endpoint(self) -> Endpoint:
        if self._endpoint is None or not self.running:
            raise PayloadError("the swarm worker is not running")
        return self._endpoint

    def close(self) -> None:
        """Ask the worker to close its session and exit (killed if it does not within EXIT_TIMEOUT)."""
        with self._lock:
            proc, self._proc, self._endpoint = self._proc, None, None
            lost, self._pending = self._pending, {}
        if proc is None:
            return
        with contextlib.suppress(PayloadError):  # already gone: nothing to ask
            self._send_to(proc, {"op": "exit"})
        _stop(proc)
        for pending in lost.values():
            pending.error = SwarmLost(f"the swarm worker {proc.pid} was stopped during a transfer")
            pending.done.set()
        log.info("swarm worker %d stopped", proc.pid)

    # -- requests ---------------------------------------------------------------------
    def seed(self, meta: TorrentMeta, payload_path: str) -> None:
        self._call({"op": "seed", "metainfo": _b64(meta.metainfo), "sha256": meta.sha256,
                    "path": os.path.abspath(payload_path)})

    def stop_seeding(self, info_hash: str) -> None:
        if self.running:
            self._call({"op": "stop_seeding", "info_hash": info_hash})

    def status(self, info_hash: str) -> TransferStatus:
        return TransferStatus(**self._call({"op": "status", "info_hash": info_hash}))

    def notify_peers_changed(self) -> None:
        """Make running downloads read their peers_provider now (e.g. from a tracker watch)."""
        with self._peers_changed:
            self._peers_generation += 1
            self._peers_changed.notify_all()

    def download(self, meta: TorrentMeta, staging_dir: str, expected_sha256: str,
                 peers_provider: PeersProvider, *, stall_timeout: float = 60.0,
                 on_progress: Callable[[TransferStatus], None] | None = None,
                 cancel: threading.Event | None = None) -> str:
        """Fetch ``meta`` in the worker (as SwarmSession.download): the verified file's path.  The
        worker is told the peers now, every ``peer_refresh_interval`` and after each
        ``notify_peers_changed``.  SwarmLost if the worker ends meanwhile."""
        rid, pending = self._register(on_progress)
        stop = threading.Event()
        try:
            sent = _endpoints(peers_provider)
            self._send({"op": "peers", "info_hash": meta.info_hash, "peers": sent})
            self._send({"op": "download", "id": rid, "metainfo": _b64(meta.metainfo), "sha256": expected_sha256,
                        "dir": os.path.abspath(staging_dir), "stall_timeout": stall_timeout})
            threading.Thread(target=self._push_peers, args=(meta.info_hash, peers_provider, sent, stop),
                             name="swarm-peers", daemon=True).start()
            while not pending.done.wait(0.2):
                if cancel is not None and cancel.is_set():
                    self._send({"op": "cancel", "id": rid})
                    cancel = None  # once; the worker answers DownloadCancelled
        finally:
            stop.set()
            self.notify_peers_changed()
            with self._lock:
                self._pending.pop(rid, None)
        if pending.error is not None:
            raise pending.error
        return str(pending.result)

    def _push_peers(self, info_hash: str, provider: PeersProvider, sent: list[Endpoint],
                    stop: threading.Event) -> None:
        """Tell the worker the download's peers whenever they change (``sent``: the last list told)."""
        while not stop.is_set():
            with self._peers_changed:
                seen = self._peers_generation

                def woken(seen: int = seen) -> bool:
                    return stop.is_set() or self._peers_generation != seen

                self._peers_changed.wait_for(woken, self.config.peer_refresh_interval)
            if stop.is_set():
                return
            try:
                peers = _endpoints(provider)
                if peers != sent:
                    self._send({"op": "peers", "info_hash": info_hash, "peers": peers})
                    sent = peers
            except PayloadError:
                return  # the worker is gone: the download's own wait says so
            except Exception:  # a tracker read failed: the provider keeps its last list
                log.exception("reading the peers of %s", info_hash)

    def _register(self, on_progress: Callable[[TransferStatus], None] | None = None) -> tuple[int, _Pending]:
        pending = _Pending(on_progress=on_progress)
        with self._lock:
            if self._proc is None:
                raise SwarmLost("the swarm worker is not running")
            rid = next(self._ids)
            self._pending[rid] = pending
        return rid, pending

    def _call(self, request: dict[str, Any]) -> Any:
        rid, pending = self._register()
        try:
            self._send({**request, "id": rid})
            if not pending.done.wait(REQUEST_TIMEOUT):
                raise PayloadError(f"the swarm worker did not answer {request['op']} within {REQUEST_TIMEOUT:g}s")
        finally:
            with self._lock:
                self._pending.pop(rid, None)
        if pending.error is not None:
            raise pending.error
        return pending.result

    def _send(self, request: dict[str, Any]) -> None:
        proc = self._proc
        if proc is None:
            raise SwarmLost("the swarm worker is not running")
        self._send_to(proc, request)

    def _send_to(self, proc: subprocess.Popen[str], request: dict[str, Any]) -> None:
        assert proc.stdin is not None
        try:
            with self._write_lock:
                proc.stdin.write(json.dumps(request) + "\n")
                proc.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            raise SwarmLost(f"the swarm worker {proc.pid} has exited") from None

    # -- what the worker tells ---------------------------------------------------------------
    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            event = _parse(line)
            if event is None:
                log.warning("swarm worker %d said something that is not JSON: %.200s", proc.pid, line)
                continue
            kind = event.get("event")
            if kind in ("reply", "progress"):
                with self._lock:
                    pending = self._pending.get(int(event.get("id") or 0))
                if pending is None:
                    continue
                if kind == "progress":
                    if pending.on_progress is not None:
                        pending.on_progress(TransferStatus(**event["status"]))
                    continue
                error = event.get("error")
                if error:
                    pending.error = ERROR_KINDS.get(error.get("kind"), PayloadError)(error.get("message", ""))
                pending.result = event.get("result")
                pending.done.set()
            elif kind == "idle" and self.on_idle is not None:
                threading.Thread(target=self.on_idle, name="swarm-idle", daemon=True).start()
        code = proc.wait()
        with self._lock:
            current = self._proc is proc
            if current:
                self._proc, self._endpoint = None, None
            lost, self._pending = (self._pending, {}) if current else ({}, self._pending)
        for pending in lost.values():
            pending.error = SwarmLost(f"the swarm worker {proc.pid} exited (status {code}) during a transfer")
            pending.done.set()
        if current:
            log.error("swarm worker %d exited on its own (status %s)", proc.pid, code)
            if self.on_exit is not None:
                self.on_exit(code)


def _worker_env() -> dict[str, str]:
    """The agent's environment, with the directory zkdeploy was imported from first on the path (an
    agent run from a source tree, not installed, starts its worker from the same code)."""
    here = str(Path(zkdeploy.__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": here + (os.pathsep + path if path else "")}


def _endpoints(provider: PeersProvider) -> list[Endpoint]:
    return [(str(ip), int(port)) for ip, port in provider()]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _parse(line: str | None) -> dict[str, Any] | None:
    if not line:
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def _read_line(stream: IO[str], timeout: float) -> str | None:
    """One line of ``stream`` within ``timeout`` seconds (None at its end or on timeout)."""
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return got[0] if got and got[0] else None


def _stop(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(OSError):  # the pipe is broken: the worker is gone already
        if proc.stdin is not None:
            proc.stdin.close()
    try:
        proc.wait(EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
