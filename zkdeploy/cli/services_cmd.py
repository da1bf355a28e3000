"""``zkdeploy services``: the fleet's catalog of services, validated, diffed and stored in ZooKeeper."""

from __future__ import annotations

import json
from typing import Any

import click

from zkdeploy.cli.context import Ctx, confirm, force_option, handle_errors, json_option, pass_ctx
from zkdeploy.cli.output import emit_json, say, table, warn
from zkdeploy.config.loader import load_catalog


@click.group("services")
def services_group() -> None:
    """Manage the fleet catalog of services (stored in ZooKeeper)."""


def _diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    lines = []
    old_s, new_s = old.get("services", {}), new.get("services", {})
    for name in sorted(set(old_s) | set(new_s)):
        if name not in old_s:
            lines.append(f"+ {name}")
        elif name not in new_s:
            lines.append(f"- {name}")
        elif old_s[name] != new_s[name]:
            keys = sorted(k for k in set(old_s[name]) | set(new_s[name]) if old_s[name].get(k) != new_s[name].get(k))
            for key in keys:
                before, after = json.dumps(old_s[name].get(key)), json.dumps(new_s[name].get(key))
                lines.append(f"~ {name}.{key}: {before} -> {after}")
    return lines


@services_group.command("apply")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Validate and show the diff; store nothing.")
@force_option
@json_option
@pass_ctx
@handle_errors
def services_apply(ctx: Ctx, file: str, dry_run: bool, force: bool, as_json: bool) -> None:
    """Validate FILE, show what changes, and store it as the catalog.

    Every problem in FILE is reported at once, with its key.  The write is
    conditional: if someone else changed the catalog meanwhile, nothing is
    stored and you are asked to apply again.  Removing services asks first
    (--yes does not ask) when FILE empties the catalog or when agents still
    run a removed service (it is in /current): they would no longer be
    deployed, and a deploy of them is refused.
    """
    catalog = load_catalog(file)
    new = catalog.model_dump(mode="json", exclude_defaults=True)
    store = ctx.store()
    old, version = store.catalog()
    changes = _diff(old or {}, new)
    removed = sorted(set((old or {}).get("services", {})) - set(new.get("services", {})))
    running = {s: len(store.current(s)) for s in removed}
    running = {s: n for s, n in running.items() if n}
    risks = []
    if removed and not new.get("services"):
        risks.append(f"{file} has no service: this deletes the whole catalog ({len(removed)} service(s))")
    risks += [f"{s} is removed but {n} node(s) still run it (in /current)" for s, n in running.items()]
    for risk in risks:
        warn(risk)
    if risks and not dry_run:
        confirm("store this catalog?", force)
    if not dry_run and changes:
        store.put_catalog(new, version)
    if as_json:
        emit_json({"changes": changes, "stored": bool(changes) and not dry_run, "warnings": risks})
        return
    for line in changes or ["(no changes)"]:
        say(line)
    if changes:
        say("dry run: nothing stored" if dry_run else f"catalog stored ({len(new['services'])} services)")


@services_group.command("list")
@json_option
@pass_ctx
@handle_errors
def services_list(ctx: Ctx, as_json: bool) -> None:
    """List the services of the catalog with their quorum and dependencies."""
    data, _ = ctx.store().catalog()
    services = (data or {}).get("services", {})
    if as_json:
        emit_json(services)
        return
    if not services:
        say("no catalog stored (zkdeploy services apply FILE)")
        return
    table(None, ["SERVICE", "QUORUM", "DEPENDS ON", "HEALTH CHECKS", "KEEP"],
          [[name, s.get("quorum"), ", ".join(s.get("depends_on", [])) or "-",
            len(s.get("health_checks", [])), s.get("keep_releases", 3)] for name, s in sorted(services.items())])
