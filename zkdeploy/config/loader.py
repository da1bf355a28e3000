"""Read configuration files and report every problem at once, with file and key."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from zkdeploy.config.schema import AgentConfig, Catalog
from zkdeploy.errors import ConfigError
from zkdeploy.policy.order import find_cycle

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
    """Parse YAML text; a syntax error names ``source`` and the line."""
    try:
        return yaml.safe_load(text)
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


def parse_catalog(data: Any, source: str) -> Catalog:
    """Validate catalog data (already parsed) and return it, or raise ConfigError listing every problem."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with a 'services' key", [])
    try:
        catalog = Catalog.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid catalog", _format_errors(source, exc)) from None
    problems = []
    for name, spec in catalog.services.items():
        for dep in spec.depends_on:
            if dep not in catalog.services:
                problems.append(f"{source}: services.{name}.depends_on: unknown service {dep!r}")
            if dep == name:
                problems.append(f"{source}: services.{name}.depends_on: a service cannot depend on itself")
        templates = [spec.start, spec.stop or "", *spec.pre_stop, *spec.post_start]
        templates += [hc.target for hc in spec.health_checks]
        for template in templates:
            try:
                template_fields(template)
            except ConfigError as exc:
                problems.append(f"{source}: services.{name}: {exc}")
    cycle = find_cycle({n: [d for d in s.depends_on if d != n] for n, s in catalog.services.items()})
    if cycle:
        problems.append(f"{source}: dependency cycle: " + " -> ".join(cycle))
    if problems:
        raise ConfigError(f"{source}: invalid catalog", problems)
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
