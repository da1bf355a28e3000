"""The ``zkdeploy`` command."""

from __future__ import annotations

import importlib
import logging

import click

from zkdeploy import __version__, logs
from zkdeploy.cli.context import Ctx, check_globals

#: every command: its name -> "module:attribute" under zkdeploy.cli, in the order ``--help`` lists them.
#: A command's module is imported only when that command runs (or help lists them all), so that
#: ``zkdeploy agent`` loads the agent and not every command's libraries (docs/benchmarks.md, footprint).
COMMANDS = {
    "services": "services_cmd:services_group", "stage": "stage_cmd:stage", "deploy": "commands:deploy",
    "scenario": "scenario_cmd:scenario_group", "deploys": "deploys_cmd:deploys", "rollout": "deploys_cmd:rollout",
    "abort": "steering_cmd:abort", "resume": "steering_cmd:resume", "pause": "steering_cmd:pause",
    "rollback": "commands:rollback", "killswitch": "steering_cmd:killswitch", "promote": "controls_cmd:promote",
    "mark": "controls_cmd:mark", "unmark": "controls_cmd:unmark", "pin": "controls_cmd:pin",
    "unpin": "controls_cmd:unpin", "status": "show:status", "nodes": "show:nodes", "agent": "agent_cmd:agent",
    "demo": "demo_cmd:demo", "plan": "reports_cmd:plan", "history": "reports_cmd:history",
    "undo": "reports_cmd:undo", "seed": "seeding:seed", "swarm": "seeding:swarm", "journal": "journal_cmd:journal",
    "acl": "security_cmd:acl", "keys": "security_cmd:keys",
}


def load_command(name: str) -> click.Command:
    """The command ``name`` of COMMANDS, its module imported now."""
    module, attribute = COMMANDS[name].split(":")
    command: click.Command = getattr(importlib.import_module(f"zkdeploy.cli.{module}"), attribute)
    if name == "nodes" and isinstance(command, click.Group) and "forget" not in command.commands:
        from zkdeploy.cli.commands import nodes_forget

        command.add_command(nodes_forget)
    return command


class LazyGroup(click.Group):
    """A group whose commands are imported when first used (click's documented lazy-loading pattern)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return load_command(cmd_name) if cmd_name in COMMANDS else None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--zk", envvar="ZKDEPLOY_ZK", default="127.0.0.1:2181", show_default=True, metavar="HOSTS",
              help="ZooKeeper servers, comma-separated host:port (env ZKDEPLOY_ZK).")
@click.option("--root", envvar="ZKDEPLOY_ROOT", default="/dc", show_default=True, metavar="PATH",
              help="The fleet's root znode (env ZKDEPLOY_ROOT).")
@click.option("--zk-timeout", type=float, default=10.0, show_default=True,
              help="Seconds to wait for ZooKeeper to connect or answer.")
@click.option("--verbose", "-v", is_flag=True, help="Log what the libraries do too (ZooKeeper retries...).")
@click.option("--zk-auth-file", envvar="ZKDEPLOY_ZK_AUTH_FILE", metavar="FILE",
              type=click.Path(exists=True, dir_okay=False),
              help="ZooKeeper credentials file, mode 600 (env ZKDEPLOY_ZK_AUTH_FILE); see docs/security.md.")
@click.option("--zk-tls-ca", envvar="ZKDEPLOY_ZK_TLS_CA", metavar="PEM", type=click.Path(exists=True, dir_okay=False),
              help="Connect with TLS, trusting this CA (env ZKDEPLOY_ZK_TLS_CA); --zk names the secure port.")
@click.option("--zk-tls-cert", envvar="ZKDEPLOY_ZK_TLS_CERT", metavar="PEM",
              type=click.Path(exists=True, dir_okay=False), help="TLS client certificate (env ZKDEPLOY_ZK_TLS_CERT).")
@click.option("--zk-tls-key", envvar="ZKDEPLOY_ZK_TLS_KEY", metavar="PEM",
              type=click.Path(exists=True, dir_okay=False), help="Its private key, mode 600 (env ZKDEPLOY_ZK_TLS_KEY).")
@click.version_option(__version__, prog_name="zkdeploy")
@click.pass_context
def cli(ctx: click.Context, zk: str, root: str, zk_timeout: float, verbose: bool, zk_auth_file: str | None,
        zk_tls_ca: str | None, zk_tls_cert: str | None, zk_tls_key: str | None) -> None:
    """zkdeploy: rolling deploys coordinated through ZooKeeper.

    Agents on every node restart their services one safe slot at a time, in
    dependency order; these commands record what you want and show where the
    fleet stands.  Typical flow:

    \b
      zkdeploy services apply conf/services.yaml
      zkdeploy stage web 2.0 web-2.0.tar.gz
      zkdeploy deploy web@2.0 --wait
      zkdeploy status

    Exit codes: 0 ok, 2 bad input or refused (nothing changed), 3 ZooKeeper
    unreachable, 4 rollout failed, halted, aborted or timed out, 5 payload
    problem, 6 service command failed, 7 journal problem, 130 interrupted
    (Ctrl-C; a rollout goes on).
    """
    check_globals(root, zk_timeout)
    if ctx.invoked_subcommand not in ("agent", "seed"):  # those set up their own logging from their file
        logs.setup(node="cli", level=logging.DEBUG if verbose else logging.WARNING, cli=True)
    ctx.obj = Ctx(zk=zk, root=root, timeout=zk_timeout, auth_file=zk_auth_file, tls_ca=zk_tls_ca,
                  tls_cert=zk_tls_cert, tls_key=zk_tls_key)


def main() -> None:
    cli(prog_name="zkdeploy")


if __name__ == "__main__":
    main()
