"""The agent's per-service state machine and the release directories of a host."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import time
from collections import deque
from pathlib import Path

import pytest

from zkdeploy.agent.releases import ReleaseDir
from zkdeploy.agent.states import RESTART_PHASES, TRANSITIONS, Phase, ServiceMachine, TransitionError
from zkdeploy.errors import PayloadError, UnsafeNameError
from zkdeploy.model import Release

P = Phase

#: every allowed transition, written out independently of the module's table
ALLOWED = {
    (P.IDLE, P.FETCHING), (P.IDLE, P.STAGED), (P.IDLE, P.WAITING),
    (P.FETCHING, P.STAGED), (P.FETCHING, P.IDLE), (P.FETCHING, P.WAITING),
    (P.STAGED, P.WAITING), (P.STAGED, P.FETCHING), (P.STAGED, P.IDLE),
    (P.WAITING, P.DRAINING), (P.WAITING, P.SWITCHING), (P.WAITING, P.STAGED), (P.WAITING, P.IDLE),
    (P.DRAINING, P.STOPPING), (P.DRAINING, P.ROLLING_BACK),
    (P.STOPPING, P.SWITCHING), (P.STOPPING, P.ROLLING_BACK),
    (P.SWITCHING, P.STARTING), (P.SWITCHING, P.ROLLING_BACK),
    (P.STARTING, P.CHECKING), (P.STARTING, P.ROLLING_BACK),
    (P.CHECKING, P.IDLE), (P.CHECKING, P.ROLLING_BACK),
    (P.ROLLING_BACK, P.IDLE),
    (P.DRAINING, P.HELD), (P.STOPPING, P.HELD), (P.SWITCHING, P.HELD), (P.STARTING, P.HELD), (P.CHECKING, P.HELD),
    (P.HELD, P.IDLE), (P.HELD, P.WAITING),
}


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Phase, Phase, str]] = []

    def __call__(self, old: Phase, new: Phase, detail: str) -> None:
        self.calls.append((old, new, detail))


def _path_to(phase: Phase) -> list[Phase]:
    """The shortest walk from idle to ``phase`` over the allowed transitions."""
    seen = {P.IDLE: [P.IDLE]}
    todo = deque([P.IDLE])
    while todo:
        here = todo.popleft()
        for old, new in sorted(ALLOWED):
            if old == here and new not in seen:
                seen[new] = seen[here] + [new]
                todo.append(new)
    return seen[phase]


def _machine_at(phase: Phase) -> tuple[ServiceMachine, Recorder]:
    recorder = Recorder()
    machine = ServiceMachine("web", recorder)
    for step in _path_to(phase)[1:]:
        machine.to(step)
    assert machine.phase == phase
    recorder.calls.clear()
    return machine, recorder


def test_the_table_lists_exactly_the_documented_transitions() -> None:
    table = {(old, new) for old, targets in TRANSITIONS.items() for new in targets}
    assert table == ALLOWED
    assert set(TRANSITIONS) == set(Phase)


@pytest.mark.parametrize("old, new", sorted(ALLOWED), ids=lambda p: p.value)
def test_every_listed_transition_is_allowed(old: Phase, new: Phase) -> None:
    machine, recorder = _machine_at(old)
    machine.to(new, f"{old.value} to {new.value}")
    assert machine.phase == new
    assert recorder.calls == [(old, new, f"{old.value} to {new.value}")]


@pytest.mark.parametrize("old, new", [
    (P.IDLE, P.SWITCHING),
    (P.IDLE, P.DRAINING),
    (P.IDLE, P.ROLLING_BACK),
    (P.FETCHING, P.SWITCHING),
    (P.STAGED, P.STARTING),
    (P.DRAINING, P.IDLE),
    (P.STOPPING, P.IDLE),
    (P.SWITCHING, P.IDLE),
    (P.STARTING, P.IDLE),
    (P.CHECKING, P.STARTING),
    (P.ROLLING_BACK, P.CHECKING),
    (P.ROLLING_BACK, P.STAGED),
], ids=lambda p: p.value)
def test_forbidden_transitions_raise_and_change_nothing(old: Phase, new: Phase) -> None:
    machine, recorder = _machine_at(old)
    with pytest.raises(TransitionError) as info:
        machine.to(new)
    assert str(info.value) == f"web: {old.value} -> {new.value} is not a valid transition"
    assert machine.phase == old
    assert recorder.calls == []


def test_every_pair_not_listed_is_forbidden() -> None:
    for old in Phase:
        for new in Phase:
            if new == old or (old, new) in ALLOWED:
                continue
            machine, _ = _machine_at(old)
            with pytest.raises(TransitionError):
                machine.to(new)


def test_a_transition_to_the_same_phase_is_a_no_op() -> None:
    machine, recorder = _machine_at(P.STAGED)
    machine.to(P.STAGED, "again")
    assert machine.phase == P.STAGED
    assert recorder.calls == []


def test_a_full_restart_reports_every_step() -> None:
    recorder = Recorder()
    machine = ServiceMachine("web", recorder)
    walk = [P.FETCHING, P.STAGED, P.WAITING, P.DRAINING, P.STOPPING, P.SWITCHING, P.STARTING, P.CHECKING, P.IDLE]
    restarting = []
    for step in walk:
        machine.to(step, step.value)
        restarting.append(machine.restarting)
    assert [(o.value, n.value) for o, n, _ in recorder.calls] == list(zip(
        ["idle", "fetching", "staged", "waiting", "draining", "stopping", "switching", "starting", "checking"],
        ["fetching", "staged", "waiting", "draining", "stopping", "switching", "starting", "checking", "idle"],
        strict=True))
    assert restarting == [False, False, False, True, True, True, True, True, False]


def test_restart_phases() -> None:
    assert {P.DRAINING, P.STOPPING, P.SWITCHING, P.STARTING, P.CHECKING, P.ROLLING_BACK} == RESTART_PHASES


@pytest.mark.parametrize("phase", [P.FETCHING, P.STAGED, P.WAITING])
def test_reset_from_a_non_restart_phase(phase: Phase) -> None:
    machine, recorder = _machine_at(phase)
    machine.reset("deploy changed")
    assert machine.phase == P.IDLE
    assert recorder.calls == [(phase, P.IDLE, "deploy changed")]


def test_reset_from_idle_does_nothing() -> None:
    machine, recorder = _machine_at(P.IDLE)
    machine.reset("nothing to do")
    assert machine.phase == P.IDLE
    assert recorder.calls == []


@pytest.mark.parametrize("phase", sorted(RESTART_PHASES, key=lambda p: p.value), ids=lambda p: p.value)
def test_reset_from_a_restart_phase_is_refused(phase: Phase) -> None:
    machine, recorder = _machine_at(phase)
    with pytest.raises(TransitionError) as info:
        machine.reset("deploy changed")
    assert str(info.value) == f"web: cannot leave {phase.value} without rolling back"
    assert machine.phase == phase
    assert recorder.calls == []


# --------------------------------------------------------------------------- ReleaseDir


def _archive(path: Path, version: str, dot_mtime: int | None = None) -> Path:
    """A payload holding VERSION; with ``dot_mtime`` it starts with a './' entry, as `tar -C dir .` makes."""
    with tarfile.open(path, "w:gz") as tar:
        if dot_mtime is not None:
            info = tarfile.TarInfo(".")
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            info.mtime = dot_mtime
            tar.addfile(info)
        data = f"{version}\n".encode()
        info = tarfile.TarInfo("./VERSION" if dot_mtime is not None else "VERSION")
        info.size = len(data)
        info.mtime = dot_mtime or int(time.time())
        tar.addfile(info, io.BytesIO(data))
    return path


class CopyFetcher:
    """Fetches a release by copying its payload from a local 'origin' directory."""

    def __init__(self, origin: Path) -> None:
        self.origin = origin
        self.calls: list[str] = []

    def __call__(self, release: Release, dest: Path) -> Path:
        self.calls.append(release.version)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.origin / f"{release.version}.tgz", dest)
        return dest


def _release(version: str, origin: Path) -> Release:
    payload = origin / f"{version}.tgz"
    sha = hashlib.sha256(payload.read_bytes()).hexdigest() if payload.exists() else ""
    return Release(service="web", version=version, sha256=sha, origin=str(payload))


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    path = tmp_path / "origin"
    path.mkdir()
    for version in ("1.0", "2.0", "3.0", "4.0"):
        _archive(path / f"{version}.tgz", version)
    return path


@pytest.fixture
def rel(tmp_path: Path) -> ReleaseDir:
    return ReleaseDir(tmp_path / "data", "web")


def _point(rel: ReleaseDir, version: str) -> None:
    """Make ``version`` the live release (what a restart's journaled symlink swap does)."""
    rel.link.parent.mkdir(parents=True, exist_ok=True)
    rel.link.unlink(missing_ok=True)
    os.symlink(rel.link_target(version), rel.link)


def _install(rel: ReleaseDir, origin: Path, versions: list[str], fetcher: CopyFetcher | None = None) -> None:
    """Install ``versions`` in order, each with a distinct, increasing unpack time."""
    fetcher = fetcher or CopyFetcher(origin)
    base = time.time() - 1000
    for i, version in enumerate(versions):
        rel.install(_release(version, origin), fetcher)
        os.utime(rel.path(version), (base + i, base + i))


def test_release_dir_layout(tmp_path: Path, rel: ReleaseDir) -> None:
    data = tmp_path / "data"
    assert rel.path("1.0") == data / "releases" / "web" / "1.0"
    assert rel.payload_path("1.0") == data / "payloads" / "web" / "1.0.payload"
    assert rel.link == data / "current" / "web"


@pytest.mark.parametrize("version", ["../1.0", "..", "a/b", ""])
def test_unsafe_versions_are_refused(rel: ReleaseDir, version: str) -> None:
    with pytest.raises(UnsafeNameError):
        rel.path(version)
    with pytest.raises(UnsafeNameError):
        rel.payload_path(version)


def test_unsafe_service_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsafeNameError):
        ReleaseDir(tmp_path, "../web")


def test_install_fetches_verifies_and_unpacks(rel: ReleaseDir, origin: Path) -> None:
    fetcher = CopyFetcher(origin)
    path = rel.install(_release("1.0", origin), fetcher)
    assert path == rel.path("1.0")
    assert (path / "VERSION").read_text() == "1.0\n"
    assert rel.payload_path("1.0").read_bytes() == (origin / "1.0.tgz").read_bytes()  # kept for seeding
    assert rel.has("1.0")
    assert rel.installed() == ["1.0"]
    assert fetcher.calls == ["1.0"]


def test_install_is_idempotent(rel: ReleaseDir, origin: Path) -> None:
    fetcher = CopyFetcher(origin)
    first = rel.install(_release("1.0", origin), fetcher)
    second = rel.install(_release("1.0", origin), fetcher)
    assert first == second
    assert fetcher.calls == ["1.0"]


def test_install_reuses_a_payload_already_fetched(rel: ReleaseDir, origin: Path) -> None:
    rel.payloads.mkdir(parents=True)
    shutil.copyfile(origin / "2.0.tgz", rel.payload_path("2.0"))
    fetcher = CopyFetcher(origin)
    rel.install(_release("2.0", origin), fetcher)
    assert fetcher.calls == []
    assert (rel.path("2.0") / "VERSION").read_text() == "2.0\n"


def test_install_of_a_bad_payload_removes_it(rel: ReleaseDir, origin: Path) -> None:
    (origin / "9.0.tgz").write_bytes(b"garbage, not a tar")
    with pytest.raises(PayloadError):
        rel.install(_release("9.0", origin), CopyFetcher(origin))
    assert not rel.payload_path("9.0").exists()
    assert not rel.has("9.0")
    assert rel.installed() == []


def test_install_passes_on_a_fetch_failure(rel: ReleaseDir, origin: Path) -> None:
    def failing(release: Release, dest: Path) -> Path:
        raise PayloadError(f"cannot fetch {release.version}")

    with pytest.raises(PayloadError, match=r"cannot fetch 1\.0"):
        rel.install(_release("1.0", origin), failing)
    assert not rel.has("1.0")


def test_prune_keeps_the_newest(rel: ReleaseDir, origin: Path) -> None:
    _install(rel, origin, ["1.0", "2.0", "3.0", "4.0"])
    _point(rel, "4.0")
    assert rel.prune(keep=2, protect=set()) == ["1.0", "2.0"]
    assert rel.installed() == ["3.0", "4.0"]
    assert not rel.payload_path("1.0").exists()
    assert not rel.payload_path("2.0").exists()
    assert rel.payload_path("3.0").exists()
    assert rel.prune(keep=2, protect=set()) == []


def test_prune_never_removes_the_live_release(rel: ReleaseDir, origin: Path) -> None:
    _install(rel, origin, ["1.0", "2.0", "3.0", "4.0"])
    _point(rel, "1.0")  # rolled back to the oldest
    assert rel.prune(keep=1, protect=set()) == ["2.0", "3.0", "4.0"]
    assert rel.installed() == ["1.0"]
    assert rel.current_version() == "1.0"


def test_prune_never_removes_protected_releases(rel: ReleaseDir, origin: Path) -> None:
    _install(rel, origin, ["1.0", "2.0", "3.0", "4.0"])
    _point(rel, "3.0")
    assert rel.prune(keep=1, protect={"1.0"}) == ["2.0", "4.0"]
    assert rel.installed() == ["1.0", "3.0"]


def test_prune_with_nothing_installed(rel: ReleaseDir) -> None:
    assert rel.installed() == []
    assert rel.prune(keep=1, protect=set()) == []


def test_installed_ignores_hidden_leftovers(rel: ReleaseDir, origin: Path) -> None:
    _install(rel, origin, ["1.0"])
    (rel.root / ".unpack-2.0-abc").mkdir()
    assert rel.installed() == ["1.0"]


def test_installed_order_is_unpack_order_even_when_the_archive_has_a_dot_entry(rel: ReleaseDir,
                                                                                 tmp_path: Path) -> None:
    # `tar -C build .` archives carry a './' entry whose mtime is whatever the build recorded
    # (a rebuild of an older branch, SOURCE_DATE_EPOCH, ...), not when this host installed it.
    origin = tmp_path / "dot-origin"
    origin.mkdir()
    _archive(origin / "1.0.tgz", "1.0", dot_mtime=1_700_000_000)
    _archive(origin / "2.0.tgz", "2.0", dot_mtime=1_600_000_000)
    _archive(origin / "3.0.tgz", "3.0", dot_mtime=1_650_000_000)
    fetcher = CopyFetcher(origin)
    for version in ("1.0", "2.0", "3.0"):
        rel.install(_release(version, origin), fetcher)
        _point(rel, version)
        time.sleep(0.05)
    assert rel.installed() == ["1.0", "2.0", "3.0"]
    # pruning must remove the release installed first, not 2.0 (the one to roll back to)
    assert rel.prune(keep=2, protect=set()) == ["1.0"]
    assert rel.has("2.0")
