"""The wave plan a deploy records: the catalog's (or a ``--waves`` file's), resolved against the
labels of the nodes that run the service when the deploy is queued."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from zkdeploy.config.loader import parse_yaml
from zkdeploy.config.schema import Catalog, WaveSpec
from zkdeploy.coordination import Store
from zkdeploy.errors import ConfigError, DeployRefusedError
from zkdeploy.policy.waves import resolve

_WAVES = TypeAdapter(tuple[WaveSpec, ...])


def load_waves(path: str | Path) -> tuple[WaveSpec, ...]:
    """The waves of a ``--waves`` file: a YAML list of waves (or a mapping with a ``waves`` list).

    ConfigError naming the file and the key of every problem at once.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
    data = parse_yaml(text, source)
    if isinstance(data, dict) and set(data) == {"waves"}:
        data = data["waves"]
    if not isinstance(data, list) or not data:
        raise ConfigError(f"{source}: expected a list of waves (each with a name and a select)")
    try:
        waves = _WAVES.validate_python(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
            problems.append(f"{source}: waves.{key}: {msg}")
        raise ConfigError(f"{source}: invalid wave plan", problems) from None
    names = [w.name for w in waves]
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}: wave names must be unique, got {', '.join(names)}")
    return waves


def node_labels(store: Store, service: str) -> dict[str, dict[str, Any]]:
    """Labels of the registered nodes that run ``service`` (their agent lists it, or it is in /current)."""
    current = set(store.current(service))
    return {name: dict(rec.labels) for name, rec in store.nodes().items()
            if service in rec.services or name in current}


def wave_plans(store: Store, catalog: Catalog, services: list[str], *, override: tuple[WaveSpec, ...] | None,
               no_waves: bool) -> dict[str, tuple[dict[str, Any], ...]]:
    """Each service's resolved plan (empty: every node at once), from ``override`` or the catalog.

    DeployRefusedError listing every service whose plan cannot be used (a
    selector that matches no node, overlapping waves); nothing is written.
    """
    out: dict[str, tuple[dict[str, Any], ...]] = {}
    problems: list[str] = []
    for service in services:
        specs = () if no_waves else override if override is not None else catalog.services[service].waves
        if not specs:
            out[service] = ()
            continue
        try:
            out[service] = tuple(resolve([w.model_dump(mode="json") for w in specs], node_labels(store, service)))
        except ConfigError as exc:
            problems.append(f"{service}: {exc}".replace("\n", "\n    "))
    if problems:
        raise DeployRefusedError("deploy refused, nothing was queued:\n" + "\n".join(f"  - {p}" for p in problems))
    return out
