"""Read configuration files and report every problem at once, with file and key."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from zkdeploy.config.schema import AgentConfig, Catalog
from zkdeploy.errors import ConfigError
from zkdeploy.names import check_name
from zkdeploy.policy.order import find_cycle
from zkdeploy.strictyaml import load_yaml

#: template fields every agent provides
BUILTIN_FIELDS = frozenset({"release", "version", "service", "node", "data"})


def _read_yaml(path: str | Path) -> Any:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return parse_yaml(text, str(path))


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text; a syntax error or a duplicate key names ``source`` and the line."""
    try:
        return load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{source}: malformed YAML{where}: {problem}") from None


def _format_errors(source: str, exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        problems.append(f"{source}: {key or '(top level)'}: {msg}")
    return problems


def template_fields(template: str) -> set[str]:
    """The ``{field}`` names a command or URL template refers to."""
    fields = set()
    try:
        for _, name, _, _ in string.Formatter().parse(template):
            if name:
                fields.add(name.split(".")[0].split("[")[0])
    except ValueError as exc:
        raise ConfigError(f"bad template {template!r}: {exc}") from None
    return fields


def _graph_problems(services: dict[Any, Any], source: str) -> list[str]:
    """Names, dependencies and cycles, checked on the raw data so that they are
    reported together with every other problem of the file."""
    problems = []
    graph: dict[str, list[str]] = {}
    for name, spec in services.items():
        try:
            check_name("service", name)
        except ConfigError as exc:
            problems.append(f"{source}: services.{name}: {exc}")
        deps = spec.get("depends_on", []) if isinstance(spec, dict) else []
        deps = [deps] if isinstance(deps, str) else deps if isinstance(deps, list) else []
        graph[str(name)] = [d for d in deps if isinstance(d, str)]
        for dep in graph[str(name)]:
            if dep == name:
                problems.append(f"{source}: services.{name}.depends_on: a service cannot depend on itself")
            elif dep not in services:
                problems.append(f"{source}: services.{name}.depends_on: unknown service {dep!r}")
    cycle = find_cycle({n: [d for d in deps if d != n] for n, deps in graph.items()})
    if cycle:
        problems.append(f"{source}: dependency cycle: " + " -> ".join(cycle))
    return problems


def parse_catalog(data: Any, source: str) -> Catalog:
    """Validate catalog data (already parsed) and return it, or raise ConfigError listing every problem."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with a 'services' key", [])
    problems: list[str] = []
    catalog = None
    try:
        catalog = Catalog.model_validate(data)
    except ValidationError as exc:
        problems += _format_errors(source, exc)
    if isinstance(data.get("services"), dict):
        problems += _graph_problems(data["services"], source)
    if catalog is not None:
        for name, spec in catalog.services.items():
            templates = [spec.start, spec.stop or "", *spec.pre_stop, *spec.post_start]
            templates += [hc.target for hc in spec.health_checks]
            for template in templates:
                try:
                    template_fields(template)
                except ConfigError as exc:
                    problems.append(f"{source}: services.{name}: {exc}")
    if problems:
        raise ConfigError(f"{source}: invalid catalog", list(dict.fromkeys(problems)))
    assert catalog is not None
    return catalog


def load_catalog(path: str | Path) -> Catalog:
    """Load and validate a catalog file."""
    return parse_catalog(_read_yaml(path), str(path))


def load_agent_config(path: str | Path) -> AgentConfig:
    """Load and validate an agent file."""
    source = str(path)
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of agent settings")
    try:
        config = AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid agent file", _format_errors(source, exc)) from None
    clash = BUILTIN_FIELDS & set(config.vars)
    if clash:
        raise ConfigError(
            f"{source}: invalid agent file",
            [f"{source}: vars.{k}: reserved template field" for k in sorted(clash)],
        )
    return config
