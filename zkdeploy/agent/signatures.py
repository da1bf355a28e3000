"""The agent's gate for signed releases: nothing unsigned, forged or replayed is fetched, unpacked or
switched to (see zkdeploy.signing for what is signed and why).

``ReleaseGuard.check`` runs before a payload is fetched, again on the
freshly read record just before it is unpacked, and before the cycle
restarts into a release already on disk (``Payloads.ready``).  A refusal
touches nothing on the host: it is a journal entry (a failed change set
that made no change, saying why), a line in the log, the reason published
on the node's /current entry, and a failure recorded on the open deploy of
that release, which halts it (past its failure budget) with the reason.

``ControlGuard`` decides which release marks and pins the agent acts on
(docs/security.md, "Signed marks and pins"):

* a mark or pin counts only when it is signed by a trusted key; an
  unsigned, forged or tampered one is ignored (a log line and a journal
  entry) and the node acts as if it were not there;
* of a version's signed marks the one with the highest sequence number
  counts, and of a node's pin records the one with the highest sequence
  number: a replayed older record changes nothing.  The agent keeps what it
  accepted (``<data>/state/signing/<service>.controls.json``), so a record
  deleted from ZooKeeper without a signed successor changes nothing either;
* one exception, so that a failed gate (``on_failure: mark_bad``) still
  stops its release: an **unsigned** ``bad`` mark written after the
  version's latest signed mark *halts*: no node moves *to* that version
  (neither a deploy, a wave, a pin, the other marks nor convergence takes
  it there).  It never moves a node anywhere: nodes already running it
  hold where they are until an operator signs a mark or an unmark.

A node moved by a signed mark or pin may go back to an older release than
it has run (a signed ``bad`` mark, a pin): ``ReleaseGuard.authorize``
lets that one release through the high-water check; its release record
must still be signed.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from zkdeploy.agent import deploys
from zkdeploy.agent.host import Host
from zkdeploy.coordination import Store
from zkdeploy.errors import CoordinationError, JournalError, SignatureError
from zkdeploy.model import Mark, Pin, Release
from zkdeploy.signing import SIGNATURE_BLOB, HighWater, ReleaseRecord, Verifier

log = logging.getLogger(__name__)


class ReleaseGuard:
    """Verifies release records against the node's trusted keys and remembers, per service, the
    newest sequence number it has run."""

    def __init__(self, store: Store, host: Host, verifier: Verifier, highwater: HighWater) -> None:
        self.store = store
        self.host = host
        self.verifier = verifier
        self.highwater = highwater
        self._refused: set[tuple[str, str, str]] = set()
        self._told: set[tuple[str, str]] = set()  # (deploy, reason) recorded on the deploy
        self._lock = threading.Lock()
        self._authorized: dict[str, str] = {}
        self._seqs: dict[tuple[str, str], int] = {}  # verified sequence numbers by (service, version)
        self._raised: dict[str, str] = {}  # the version whose number last raised the high-water mark
        self.controls = ControlGuard(host, verifier, highwater.dir)

    @classmethod
    def from_files(cls, store: Store, host: Host, trusted_keys: list[str]) -> ReleaseGuard:
        return cls(store, host, Verifier.from_files(trusted_keys), HighWater(Path(host.layout.state) / "signing"))

    def check(self, release: Release) -> ReleaseRecord:
        """The verified record of ``release`` (read fresh from the store); SignatureError, recorded, when
        it is refused."""
        try:
            envelope = self.store.release_blob(release.service, release.version, SIGNATURE_BLOB)
            back = self._authorized.get(release.service) == release.version
            record = self.verifier.verify(envelope, service=release.service, version=release.version,
                                          sha256=release.sha256, size=release.size,
                                          min_seq=0 if back else self.highwater.get(release.service))
            with self._lock:
                self._seqs[(release.service, release.version)] = record.seq
            return record
        except SignatureError as exc:
            self.refuse(release, exc)
            raise

    def allows(self, release: Release) -> bool:
        """``check`` as a yes/no for the cycle (a refusal is recorded once per reason)."""
        try:
            self.check(release)
            return True
        except SignatureError:
            return False
        except CoordinationError as exc:
            log.warning("%s@%s: cannot read its signature now (%s): not switching to it",
                        release.service, release.version, exc)
            return False

    def authorize(self, service: str, version: str | None) -> None:
        """A signed mark or pin sends this node to ``version`` of ``service`` now (None: nothing
        does): that release passes even when it is older than the newest one run here.  Its
        own record must still be signed and match."""
        if version is None:
            self._authorized.pop(service, None)
        else:
            self._authorized[service] = version

    def installed(self, record: ReleaseRecord) -> None:
        """A verified release was unpacked here.  That alone does not raise the high-water mark: the
        agent unpacks the newest staged release ahead of its deploy, and an operator may still deploy
        an older one first.  ``running`` raises it once the node runs the release."""
        with self._lock:
            self._seqs[(record.service, record.version)] = record.seq

    def running(self, service: str, version: str) -> None:
        """The node runs ``version`` of ``service`` (online): older records of the service are refused
        from now on.  The release's sequence number is the one verified for it (read and verified
        again after a restart; a record that no longer verifies raises nothing)."""
        with self._lock:
            if self._raised.get(service) == version:
                return
            seq = self._seqs.get((service, version))
        if seq is None:
            release = self.store.release(service, version)
            if release is None:
                return
            try:
                seq = self.verifier.verify(self.store.release_blob(service, version, SIGNATURE_BLOB),
                                           service=service, version=version, sha256=release.sha256,
                                           size=release.size).seq
            except SignatureError as exc:
                log.warning("%s@%s runs here, but its release record does not verify now (%s): the "
                            "high-water mark stays where it is", service, version, exc)
                with self._lock:
                    self._raised[service] = version  # said once; looked at again when the version changes
                return
        self.highwater.raise_to(service, seq)
        with self._lock:
            self._seqs[(service, version)] = seq
            self._raised[service] = version

    def refuse(self, release: Release, exc: SignatureError) -> None:
        """Journal and log a refusal (once per release and reason), and record it on every open deploy
        of that release not told yet: the refusal may come before the deploy, when the agent looks
        at the newest staged release ahead of it."""
        key = (release.service, release.version, str(exc))
        with self._lock:
            first = key not in self._refused
            self._refused.add(key)
        if first:
            log.error("refusing %s@%s: %s", release.service, release.version, exc)
            _journal_refusal(self.host, f"{release.service}: refused release {release.version} "
                                        f"(signature check; nothing changed)", exc)
        for entry in self._open_deploys(release):
            if (entry, str(exc)) in self._told:
                continue
            deploys.report_failure(self.store, self.host.node, entry, f"refused release: {exc}")
            self._told.add((entry, str(exc)))

    def _open_deploys(self, release: Release) -> list[str]:
        try:
            return [d.name for d in self.store.deploys()
                    if d.is_open and d.service == release.service and d.version == release.version]
        except CoordinationError as exc:
            log.warning("cannot read the deploy queue to report the refusal: %s", exc)
            return []


def _journal_refusal(host: Host, description: str, exc: SignatureError) -> None:
    """A failed change set that made no change, saying why (``zkdeploy journal`` shows it)."""
    try:
        with host.executor.change_set(description):
            raise exc
    except SignatureError:
        pass  # recorded as a failed change set with the reason and no task
    except JournalError as journal_exc:
        log.error("could not journal %r: %s", description, journal_exc)


class ControlGuard:
    """Which release marks and which of its own pins an agent with trusted keys acts on (see the
    module's docstring); remembers, per service, the signed records it accepted."""

    def __init__(self, host: Host, verifier: Verifier, directory: Path) -> None:
        self.host = host
        self.node = host.node
        self.verifier = verifier
        self.dir = directory
        self._memory: dict[str, dict[str, Any]] = {}
        self._told: set[tuple[str, ...]] = set()
        self._lock = threading.Lock()

    # -- marks ------------------------------------------------------------------------------
    def marks(self, service: str, records: Mapping[str, Mark]) -> tuple[dict[str, Mark], dict[str, Mark]]:
        """From every mark record of ``service`` (by znode name), ``(counted, halting)``: the signed
        marks that count, by version (the highest sequence number of each version; ``none`` left
        out), and the unsigned ``bad`` marks that halt their version, by version."""
        with self._lock:
            memory = self._load(service)
            accepted: dict[str, Any] = memory["marks"]
            unsigned_bad: dict[str, tuple[str, Mark]] = {}
            changed = False
            for name in sorted(records):
                mark = records[name]
                what = f"mark {mark.mark} of {service}@{mark.version} ({name}, by {mark.by or '?'})"
                if mark.service != service:
                    self._refuse(("mark", service, name), f"{service}: ignored {what}",
                                 SignatureError(f"the record is about service {mark.service!r}"))
                    continue
                if not mark.signed:
                    if mark.mark == "bad":
                        unsigned_bad[mark.version] = (name, mark)
                    else:
                        self._refuse(("mark", service, name), f"{service}: ignored unsigned {what}",
                                     SignatureError("not signed; only a signed mark moves nodes"))
                    continue
                try:
                    self.verifier.verify_control(mark)
                except SignatureError as exc:
                    self._refuse(("mark", service, name), f"{service}: ignored {what}", _reason(exc))
                    continue
                before = accepted.get(mark.version)
                if before is not None and (mark.seq, name) <= (before["mark"]["seq"], before["name"]):
                    if mark.seq < before["mark"]["seq"] and name > before["name"]:
                        self._refuse(("mark", service, name), f"{service}: ignored replayed {what}", SignatureError(
                            f"sequence {mark.seq} is older than {before['mark']['seq']}, the newest "
                            f"signed mark of {mark.version} ({before['mark']['mark']}): a replayed record"))
                    continue
                accepted[mark.version] = {"name": name, "mark": _plain(mark)}
                changed = True
            if changed:
                self._save(service)
            counted = {v: Mark(**a["mark"]) for v, a in accepted.items() if a["mark"]["mark"] != "none"}
            halting = {v: m for v, (name, m) in unsigned_bad.items()
                       if v not in accepted or name > accepted[v]["name"]}
            for version, mark in halting.items():
                self._tell(("halt", service, version, mark.by, mark.why),
                           "%s@%s is marked bad by an unsigned record (%s: %s): honoured only to halt; no node "
                           "moves to it, none moves away from it (an operator's signed mark or unmark decides)",
                           service, version, mark.by, mark.why)
            return counted, halting

    # -- pins -------------------------------------------------------------------------------
    def pin(self, service: str, record: Pin | None, now: float | None = None) -> Pin | None:
        """The pin this node acts on for ``service``, given the record ZooKeeper holds (None: none):
        the signed pin or unpin record with the highest sequence number it has accepted, if that
        is a pin.  An unsigned, forged or replayed record, or a record deleted without a signed
        ``unpin``, leaves the accepted one in force."""
        with self._lock:
            memory = self._load(service)
            kept = Pin(**memory["pin"]) if memory.get("pin") else None
            if record is not None and record.signed and kept is not None and record.seq == kept.seq:
                pass  # the record already accepted
            elif record is not None:
                what = f"{record.kind} of {record.node} for {service}" + \
                    (f"@{record.version}" if record.kind == "pin" else "") + f" (by {record.by or '?'})"
                key = ("pin", service, str(record.seq), record.sig, record.version, str(record.until))
                try:
                    if record.node != self.node or record.service != service:
                        raise SignatureError(f"the record is about {record.node}/{record.service}")
                    try:
                        self.verifier.verify_control(record)
                    except SignatureError as exc:
                        raise _reason(exc) from None
                    if kept is not None and record.seq < kept.seq:
                        raise SignatureError(f"sequence {record.seq} is older than {kept.seq}, the newest "
                                             f"this node accepted: a replayed record")
                    kept = record
                    memory["pin"] = _plain(record)
                    self._save(service)
                except SignatureError as exc:
                    self._refuse(key, f"{service}: ignored {what}", exc)
            elif kept is not None and kept.active(time.time() if now is None else now):
                self._tell(("pin-gone", service, str(kept.seq)),
                           "%s: the pin to %s was removed without a signed unpin: still pinned "
                           "(zkdeploy unpin --sign KEYFILE)", service, kept.version)
            return kept if kept is not None and kept.kind == "pin" else None

    # -- memory and reporting -------------------------------------------------------------------
    def _path(self, service: str) -> Path:
        return self.dir / f"{service}.controls.json"

    def _load(self, service: str) -> dict[str, Any]:
        if service not in self._memory:
            try:
                data = json.loads(self._path(service).read_text())
                if not isinstance(data, dict):
                    raise ValueError("not an object")
            except FileNotFoundError:
                data = {}
            except (OSError, ValueError) as exc:  # unreadable: start afresh, loudly (records are re-read)
                log.error("%s: cannot read %s (%s): starting from the records in ZooKeeper",
                          service, self._path(service), exc)
                data = {}
            data.setdefault("marks", {})
            self._memory[service] = data
        return self._memory[service]

    def _save(self, service: str) -> None:
        """Durably (temp file, fsync, rename), like the release high-water mark."""
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{service}.controls.json.tmp"
        with open(tmp, "w") as out:
            json.dump(self._memory[service], out, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self._path(service))

    def _refuse(self, key: tuple[str, ...], description: str, exc: SignatureError) -> None:
        """Log and journal an ignored record, once."""
        if key in self._told:
            return
        self._told.add(key)
        log.error("%s: %s", description, exc)
        _journal_refusal(self.host, f"{description} (signature check; nothing changed)", exc)

    def _tell(self, key: tuple[str, ...], message: str, *args: object) -> None:
        if key not in self._told:
            self._told.add(key)
            log.warning(message, *args)


def _reason(exc: SignatureError) -> SignatureError:
    """The verifier's refusal without the description of the record it starts with (the guard's own
    description, with the record's name and author, replaces it)."""
    return SignatureError(str(exc).partition(": ")[2] or str(exc))


def _plain(item: Mark | Pin) -> dict[str, Any]:
    data = asdict(item)
    data.pop("zversion", None)
    return data
