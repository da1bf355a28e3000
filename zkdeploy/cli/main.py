"""The ``zkdeploy`` command."""

from __future__ import annotations

import logging

import click

from zkdeploy import __version__, logs
from zkdeploy.cli import commands, show
from zkdeploy.cli.agent_cmd import agent
from zkdeploy.cli.context import Ctx, check_globals
from zkdeploy.cli.controls_cmd import mark, pin, promote, unmark, unpin
from zkdeploy.cli.demo_cmd import demo
from zkdeploy.cli.deploys_cmd import deploys, rollout
from zkdeploy.cli.journal_cmd import journal
from zkdeploy.cli.reports_cmd import history, plan, undo
from zkdeploy.cli.scenario_cmd import scenario_group
from zkdeploy.cli.security_cmd import acl, keys
from zkdeploy.cli.seeding import seed, swarm
from zkdeploy.cli.services_cmd import services_group
from zkdeploy.cli.stage_cmd import stage
from zkdeploy.cli.steering_cmd import abort, killswitch, pause, resume


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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


cli.add_command(services_group)
cli.add_command(stage)
cli.add_command(commands.deploy)
cli.add_command(scenario_group)
cli.add_command(deploys)
cli.add_command(rollout)
cli.add_command(abort)
cli.add_command(resume)
cli.add_command(pause)
cli.add_command(commands.rollback)
cli.add_command(killswitch)
cli.add_command(promote)
cli.add_command(mark)
cli.add_command(unmark)
cli.add_command(pin)
cli.add_command(unpin)
cli.add_command(show.status)
cli.add_command(show.nodes)
show.nodes.add_command(commands.nodes_forget)
cli.add_command(agent)
cli.add_command(demo)
cli.add_command(plan)
cli.add_command(history)
cli.add_command(undo)
cli.add_command(seed)
cli.add_command(swarm)


cli.add_command(journal)
cli.add_command(acl)
cli.add_command(keys)


def main() -> None:
    cli(prog_name="zkdeploy")


if __name__ == "__main__":
    main()
