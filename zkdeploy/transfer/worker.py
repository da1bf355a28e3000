"""The agent's swarm session in a process of its own (``python -m zkdeploy.transfer.worker``).

An idle agent does not load libtorrent at all: ``zkdeploy.transfer.swarm_process`` starts this
process when there is something to fetch, or when a fetcher wakes a holder, and stops it once the
session has had no download and no connected peer for ``idle_stop`` seconds.  Ending the process
is what gives libtorrent's memory back (closing a session inside the agent would not: its library
stays mapped).  docs/swarm.md.

One JSON object per line each way.  The parent asks (``id`` numbers its requests):

- ``{"op": "seed", "id", "metainfo", "sha256", "path"}``, ``{"op": "stop_seeding", "id", "info_hash"}``,
  ``{"op": "status", "id", "info_hash"}``;
- ``{"op": "download", "id", "metainfo", "sha256", "dir", "stall_timeout"}``, answered at the end;
  meanwhile ``{"op": "peers", "info_hash", "peers": [[ip, port], ...]}`` gives its peers (the parent
  reads the tracker) and ``{"op": "cancel", "id"}`` stops it;
- ``{"op": "exit"}``, or the end of stdin (the agent died): close the session and exit.

It tells: ``listening`` (ip, port) once, ``reply`` (id, and ``result`` or ``error`` with the
error's ``kind``), ``progress`` (id, status) about once a second during a download, and ``idle``
when it has been idle for ``idle_stop`` seconds (again after each further idle period).
``metainfo`` is base64.  Logs go to stderr, which is the agent's.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import sys
import threading
import time
from typing import Any

from zkdeploy.errors import PayloadError
from zkdeploy.transfer.metainfo import TorrentMeta, load_metainfo
from zkdeploy.transfer.swarm import SwarmSession
from zkdeploy.transfer.swarm_config import Endpoint, SwarmConfig, TransferStatus, error_kind

log = logging.getLogger("zkdeploy.transfer.worker")

IDLE_CHECK_SECONDS = 1.0


class Worker:
    """Answers one parent's requests on one SwarmSession."""

    def __init__(self, session: SwarmSession, idle_stop: float, out: Any = None) -> None:
        self.session = session
        self.idle_stop = idle_stop
        self._out = out if out is not None else sys.stdout
        self._write_lock = threading.Lock()
        self._lock = threading.Lock()
        self._peers: dict[str, list[Endpoint]] = {}
        self._cancels: dict[int, threading.Event] = {}
        self._stopping = threading.Event()

    def emit(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, **fields}) + "\n"
        with self._write_lock:
            try:
                self._out.write(line)
                self._out.flush()
            except (BrokenPipeError, ValueError):
                self._stopping.set()  # the parent is gone

    # -- the request loop ------------------------------------------------------
    def serve(self, lines: Any) -> None:
        """Answer each request line until ``exit`` or the end of ``lines``; then close the session."""
        threading.Thread(target=self._watch_idle, name="swarm-idle", daemon=True).start()
        try:
            for line in lines:
                if not line.strip():
                    continue
                try:
                    request = json.loads(line)
                except ValueError:
                    log.error("ignoring a request that is not JSON: %.200s", line)
                    continue
                if request.get("op") == "exit":
                    break
                self.handle(request)
        finally:
            self._stopping.set()
            self.session.close()

    def handle(self, request: dict[str, Any]) -> None:
        op, rid = request.get("op"), request.get("id")
        try:
            if op == "peers":
                with self._lock:
                    self._peers[request["info_hash"]] = [(str(ip), int(port)) for ip, port in request["peers"]]
                self.session.notify_peers_changed()
            elif op == "cancel":
                with self._lock:
                    cancel = self._cancels.get(int(request["id"]))
                if cancel is not None:
                    cancel.set()
            elif op == "download":
                cancel = threading.Event()
                with self._lock:
                    self._cancels[int(request["id"])] = cancel
                threading.Thread(target=self._download, args=(request, cancel), name=f"swarm-fetch-{rid}",
                                 daemon=True).start()
            elif op == "seed":
                self.session.seed(self._meta(request), request["path"])
                self.emit("reply", id=rid, result=None)
            elif op == "stop_seeding":
                self.session.stop_seeding(request["info_hash"])
                self.emit("reply", id=rid, result=None)
            elif op == "status":
                self.emit("reply", id=rid, result=dataclasses.asdict(self.session.status(request["info_hash"])))
            else:
                raise PayloadError(f"unknown swarm worker request {op!r}")
        except PayloadError as exc:
            self.emit("reply", id=rid, error={"kind": error_kind(exc), "message": str(exc)})
        except (KeyError, TypeError, ValueError) as exc:
            self.emit("reply", id=rid, error={"kind": "PayloadError", "message": f"malformed {op} request: {exc!r}"})

    @staticmethod
    def _meta(request: dict[str, Any]) -> TorrentMeta:
        return load_metainfo(base64.b64decode(request["metainfo"]), request.get("sha256"))

    def _download(self, request: dict[str, Any], cancel: threading.Event) -> None:
        rid = request["id"]
        last = [0.0]

        def progress(status: TransferStatus) -> None:
            if time.monotonic() - last[0] >= 1.0:
                last[0] = time.monotonic()
                self.emit("progress", id=rid, status=dataclasses.asdict(status))

        try:
            meta = self._meta(request)
            path = self.session.download(
                meta, request["dir"], request["sha256"], lambda: self._peers_of(meta.info_hash),
                stall_timeout=float(request["stall_timeout"]), on_progress=progress, cancel=cancel)
            self.emit("reply", id=rid, result=path)
        except PayloadError as exc:
            self.emit("reply", id=rid, error={"kind": error_kind(exc), "message": str(exc)})
        except Exception as exc:  # a thread's last word: the parent must not wait forever
            log.exception("download %s failed", rid)
            self.emit("reply", id=rid, error={"kind": "PayloadError", "message": f"swarm worker: {exc!r}"})
        finally:
            with self._lock:
                self._cancels.pop(int(rid), None)

    def _peers_of(self, info_hash: str) -> list[Endpoint]:
        with self._lock:
            return list(self._peers.get(info_hash, ()))

    # -- idleness ------------------------------------------------------------------
    def busy(self) -> bool:
        """A download runs, or a peer is connected to any torrent of the session."""
        with self._lock:
            if self._cancels:
                return True
        return any(st.num_peers > 0 or not st.is_seeding for st in self.session.torrents())

    def _watch_idle(self) -> None:
        if self.idle_stop <= 0:
            return
        idle_since = time.monotonic()
        while not self._stopping.wait(IDLE_CHECK_SECONDS):
            if self.busy():
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= self.idle_stop:
                log.info("no download and no peer for %gs: telling the agent the swarm is idle", self.idle_stop)
                self.emit("idle")
                idle_since = time.monotonic()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m zkdeploy.transfer.worker '{\"config\": {...}, \"idle_stop\": S}'\n")
        return 2
    spec = json.loads(args[0])
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s swarm-worker[{spec.get('node', '-')}] %(message)s")
    session = SwarmSession(SwarmConfig(**spec["config"]))
    worker = Worker(session, float(spec.get("idle_stop", 0)))
    try:
        ip, port = session.start()
    except PayloadError as exc:
        worker.emit("error", message=str(exc))
        return exc.exit_code
    worker.emit("listening", ip=ip, port=port)
    worker.serve(sys.stdin)
    return 0


if __name__ == "__main__":
    sys.exit(main())
