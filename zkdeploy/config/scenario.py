"""A deploy as a tested scenario (seed 003, mcollective + cucumber): the file's shape, validated.

::

    scenario: web-2.0
    deploy: web@2.0                 # SERVICE@VERSION
    select: "class=web and env=prod"  # discovery (zkdeploy.policy.selector), optional
    expect: "4"                     # N or MIN..MAX: refused, nothing changed, when the count differs
    steps:
      - name: block the load balancer
        do: lb_block                # lb_block | install | command | lb_unblock
        check: traffic_blocked      # traffic_blocked | version_answers | command | traffic_flows | none
        timeout: 30                 # seconds for one attempt of the check
        retries: 3                  # attempts before the check fails
      - name: install and start
        do: install
        check: version_answers
        url: "http://127.0.0.1:{port}/version"   # a template; the answer must contain the version
      - name: load is sane
        do: command
        command: "true"
        check: command
        check_command: "test $(cut -d. -f1 /proc/loadavg) -lt 8"
      - name: unblock
        do: lb_unblock
        check: traffic_flows

Rules checked here, all reported at once with their key: exactly one
``install`` step; ``lb_block`` before it and ``lb_unblock`` after it when
either is used; ``command`` steps name their ``command``; ``check: command``
names ``check_command``; ``version_answers`` names ``url``.  Each host runs
the steps in order under the quorum rules; the first failed check bails out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from zkdeploy.errors import ConfigError, ZkdeployError
from zkdeploy.model import StepAction
from zkdeploy.names import check_name
from zkdeploy.strictyaml import load_yaml

ACTIONS = ("lb_block", "install", "command", "lb_unblock")
CHECKS = ("traffic_blocked", "version_answers", "command", "traffic_flows", "none")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Step(_Strict):
    """One step: an action, then the check that it worked (retried ``retries`` times, ``timeout`` each)."""

    name: str
    do: StepAction
    check: Literal["traffic_blocked", "version_answers", "command", "traffic_flows", "none"] = "none"
    command: str | None = None
    undo: str | None = None          # the command that reverses ``command`` (none: nothing to undo)
    check_command: str | None = None
    url: str | None = None
    timeout: float = Field(30.0, gt=0, le=3600)
    retries: int = Field(3, ge=1, le=1000)
    interval: float = Field(1.0, ge=0, le=600)

    @model_validator(mode="after")
    def _needs(self) -> Step:
        if self.do == "command" and not self.command:
            raise ValueError("a step with 'do: command' needs 'command'")
        if self.do != "command" and (self.command or self.undo):
            raise ValueError(f"'command' and 'undo' belong to 'do: command' steps, not 'do: {self.do}'")
        if self.check == "command" and not self.check_command:
            raise ValueError("a step with 'check: command' needs 'check_command'")
        if self.check == "version_answers" and not self.url:
            raise ValueError("a step with 'check: version_answers' needs 'url'")
        return self


class Scenario(_Strict):
    """A scenario file: what to deploy, on which hosts, and the checked steps each host runs."""

    scenario: str
    deploy: str
    select: str | None = None
    expect: str | None = None
    steps: tuple[Step, ...] = Field(..., min_length=1)

    @field_validator("scenario")
    @classmethod
    def _name(cls, value: str) -> str:
        try:
            return check_name("scenario", value)
        except ZkdeployError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("deploy")
    @classmethod
    def _target(cls, value: str) -> str:
        service, at, version = value.partition("@")
        try:
            check_name("service", service)
            if not at:
                raise ValueError("deploy: give SERVICE@VERSION")
            check_name("version", version)
        except ZkdeployError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("select")
    @classmethod
    def _select(cls, value: str | None) -> str | None:
        from zkdeploy.policy.selector import parse

        if value is not None:
            try:
                parse(value)
            except ZkdeployError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("expect")
    @classmethod
    def _expect(cls, value: str | None) -> str | None:
        from zkdeploy.policy.discovery import parse_expect

        if value is not None:
            try:
                parse_expect(value)
            except ZkdeployError as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _order(self) -> Scenario:
        kinds = [s.do for s in self.steps]
        problems = []
        if kinds.count("install") != 1:
            problems.append(f"steps: exactly one 'do: install' step is needed, found {kinds.count('install')}")
        else:
            at = kinds.index("install")
            if "lb_block" in kinds and kinds.index("lb_block") > at:
                problems.append("steps: 'lb_block' must come before 'install'")
            if "lb_unblock" in kinds and kinds.index("lb_unblock") < at:
                problems.append("steps: 'lb_unblock' must come after 'install'")
            if ("lb_block" in kinds) != ("lb_unblock" in kinds):
                problems.append("steps: a scenario that blocks the load balancer must unblock it (and the reverse)")
        names = [s.name for s in self.steps]
        if len(set(names)) != len(names):
            problems.append("steps: names must be unique")
        if self.expect is not None and self.select is None:
            problems.append("expect: needs 'select' (the set whose count it checks)")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def service(self) -> str:
        return self.deploy.partition("@")[0]

    @property
    def version(self) -> str:
        return self.deploy.partition("@")[2]


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file; ConfigError naming the file and every bad key at once."""
    try:
        data = load_yaml(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"{path}: invalid scenario:\n" + "\n".join(lines)) from None
