"""What an agent knows about its host, published beside its labels for discovery.

Two kinds of facts, both flat mappings of dotted keys (``os.family``):

- the set the agent gathers itself (``gather_builtin``): the OS and its
  family, the kernel, the architecture, CPUs, memory, and the versions of
  Python and zkdeploy it runs;
- site facts (``gather_site``), from the agent file's ``facts:`` keys: a YAML
  file of facts (nested mappings are flattened to dotted keys) and a directory
  of executables, each run with a timeout, whose standard output is a YAML
  mapping (or ``key=value`` lines).  A source that fails (a file that does not
  parse, an executable that exits non-zero, prints no mapping, or runs past
  its timeout) is reported in ``errors`` and adds no fact; the others still count.

Site facts override the agent's own; the node's labels override both when a
selector reads them (zkdeploy.policy.discovery).
"""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from zkdeploy import __version__
from zkdeploy.config.schema import FactsSettings
from zkdeploy.strictyaml import load_yaml

#: the longest text kept for one fact value (facts travel in the presence znode)
MAX_VALUE = 512
#: at most this many facts are published (site sources beyond it are cut, and that is reported)
MAX_FACTS = 500


@dataclass
class Facts:
    """Gathered facts and the sources that failed (each ``source: why``)."""

    values: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def gather(settings: FactsSettings | None) -> Facts:
    """Every fact of this host: the built-in set, then the site's over it.  Never raises for a
    failing site source: it is named in ``errors``."""
    facts = Facts(gather_builtin())
    if settings is not None:
        site = gather_site(settings)
        facts.values.update(site.values)
        facts.errors.extend(site.errors)
    if len(facts.values) > MAX_FACTS:
        facts.errors.append(f"facts: {len(facts.values)} facts, only the first {MAX_FACTS} published")
        facts.values = dict(sorted(facts.values.items())[:MAX_FACTS])
    return facts


def gather_builtin() -> dict[str, Any]:
    """The agent's own facts: OS, kernel, CPUs, memory, the versions it runs."""
    release = _os_release()
    out: dict[str, Any] = {
        "os.name": release.get("ID", platform.system().lower()),
        "os.family": (release.get("ID_LIKE") or release.get("ID") or platform.system()).split()[0].lower(),
        "os.release": release.get("VERSION_ID", ""),
        "os.pretty": release.get("PRETTY_NAME", ""),
        "kernel": platform.system().lower(),
        "kernel.release": platform.release(),
        "arch": platform.machine(),
        "hostname": platform.node(),
        "cpus": os.cpu_count() or 1,
        "python.version": platform.python_version(),
        "zkdeploy.version": __version__,
    }
    memory = _memory_mb()
    if memory is not None:
        out["memory_mb"] = memory
    return out


def gather_site(settings: FactsSettings) -> Facts:
    """The site's facts from ``settings.file`` and ``settings.dir`` (in that order; later wins)."""
    facts = Facts()
    if settings.file:
        path = Path(settings.file)
        try:
            data = load_yaml(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            facts.errors.append(f"{path}: {_one_line(exc)}")
        else:
            if data is None:
                data = {}
            if isinstance(data, dict):
                facts.values.update(flatten(data))
            else:
                facts.errors.append(f"{path}: not a mapping of facts")
    if settings.dir:
        directory = Path(settings.dir)
        try:
            programs = sorted(p for p in directory.iterdir() if p.is_file() and os.access(p, os.X_OK))
        except OSError as exc:
            facts.errors.append(f"{directory}: {_one_line(exc)}")
            programs = []
        for program in programs:
            try:
                facts.values.update(run_fact_program(program, settings.timeout))
            except FactError as exc:
                facts.errors.append(f"{program}: {exc}")
    return facts


class FactError(Exception):
    """One fact source failed (local to this module: gather() reports it, never raises it)."""


def run_fact_program(program: Path, timeout: float) -> dict[str, Any]:
    """Run one fact executable (no arguments, no stdin) with ``timeout``; its facts, or FactError."""
    try:
        done = subprocess.run([str(program)], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        raise FactError(f"timed out after {timeout:g}s") from None
    except OSError as exc:
        raise FactError(_one_line(exc)) from None
    if done.returncode != 0:
        raise FactError(f"exit {done.returncode}: {_one_line(done.stderr) or 'no message'}")
    return parse_fact_output(done.stdout)


def parse_fact_output(text: str) -> dict[str, Any]:
    """A fact program's output: a YAML mapping, or ``key=value`` lines; FactError otherwise."""
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if lines and all("=" in line and ":" not in line.split("=", 1)[0] for line in lines):
        return {k.strip(): v.strip() for k, v in (line.split("=", 1) for line in lines)}
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise FactError(f"output is neither YAML nor key=value lines: {_one_line(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise FactError("output is not a mapping of facts")
    return flatten(data)


def flatten(data: dict[Any, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys; lists of scalars stay lists (``classes``); long texts cut."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            out[name] = [_scalar(v) for v in value]
        else:
            out[name] = _scalar(value)
    return out


def _scalar(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return str(value)[:MAX_VALUE]


def _os_release() -> dict[str, str]:
    out: dict[str, str] = {}
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                out[key.strip()] = value.strip().strip('"')
        break
    return out


def _memory_mb() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _one_line(value: object) -> str:
    return " ".join(str(value).split())[:300]
