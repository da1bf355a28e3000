"""The agent's gate for signed releases: nothing unsigned, forged or replayed is fetched, unpacked or
switched to (see zkdeploy.signing for what is signed and why).

``ReleaseGuard.check`` runs before a payload is fetched, again on the
freshly read record just before it is unpacked, and before the cycle
restarts into a release already on disk (``Payloads.ready``).  A refusal
touches nothing on the host: it is a journal entry (a failed change set
that made no change, saying why), a line in the log, the reason published
on the node's /current entry, and a failure recorded on the open deploy of
that release, which halts it (past its failure budget) with the reason.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from zkdeploy.agent import deploys
from zkdeploy.agent.host import Host
from zkdeploy.coordination import Store
from zkdeploy.errors import CoordinationError, JournalError, SignatureError
from zkdeploy.model import Release
from zkdeploy.signing import SIGNATURE_BLOB, HighWater, ReleaseRecord, Verifier

log = logging.getLogger(__name__)


class ReleaseGuard:
    """Verifies release records against the node's trusted keys and remembers, per service, the
    newest sequence number it has installed."""

    def __init__(self, store: Store, host: Host, verifier: Verifier, highwater: HighWater) -> None:
        self.store = store
        self.host = host
        self.verifier = verifier
        self.highwater = highwater
        self._refused: set[tuple[str, str, str]] = set()
        self._lock = threading.Lock()

    @classmethod
    def from_files(cls, store: Store, host: Host, trusted_keys: list[str]) -> ReleaseGuard:
        return cls(store, host, Verifier.from_files(trusted_keys), HighWater(Path(host.layout.state) / "signing"))

    def check(self, release: Release) -> ReleaseRecord:
        """The verified record of ``release`` (read fresh from the store); SignatureError, recorded, when
        it is refused."""
        try:
            envelope = self.store.release_blob(release.service, release.version, SIGNATURE_BLOB)
            return self.verifier.verify(envelope, service=release.service, version=release.version,
                                        sha256=release.sha256, size=release.size,
                                        min_seq=self.highwater.get(release.service))
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

    def installed(self, record: ReleaseRecord) -> None:
        """A verified release was unpacked: older records of its service are refused from now on."""
        self.highwater.raise_to(record.service, record.seq)

    def refuse(self, release: Release, exc: SignatureError) -> None:
        """Journal, log and report a refusal (once per release and reason)."""
        key = (release.service, release.version, str(exc))
        with self._lock:
            if key in self._refused:
                return
            self._refused.add(key)
        log.error("refusing %s@%s: %s", release.service, release.version, exc)
        try:
            with self.host.executor.change_set(f"{release.service}: refused release {release.version} "
                                               f"(signature check; nothing changed)"):
                raise exc
        except SignatureError:
            pass  # recorded as a failed change set with the reason and no task
        except JournalError as journal_exc:
            log.error("could not journal the refusal of %s@%s: %s", release.service, release.version, journal_exc)
        for entry in self._open_deploys(release):
            deploys.report_failure(self.store, self.host.node, entry, f"refused release: {exc}")

    def _open_deploys(self, release: Release) -> list[str]:
        try:
            return [d.name for d in self.store.deploys()
                    if d.is_open and d.service == release.service and d.version == release.version]
        except CoordinationError as exc:
            log.warning("cannot read the deploy queue to report the refusal: %s", exc)
            return []
