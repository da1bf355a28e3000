"""``zkdeploy agent``: run this node's agent in the foreground."""

from __future__ import annotations

import logging
import signal
import sys

import click

from zkdeploy import logs
from zkdeploy.cli.output import error
from zkdeploy.config.loader import load_agent_config
from zkdeploy.errors import ZkdeployError


@click.command("agent")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="The agent file (see conf/agent.yaml).")
@click.option("--verbose", "-v", is_flag=True, help="Log every cycle, not only changes.")
def agent(config_path: str, verbose: bool) -> None:
    """Run the agent of this node in the foreground until SIGTERM or SIGINT.

    It registers the node in ZooKeeper, publishes the version and state of
    each of its services, and takes part in rollouts.  A systemd unit is in
    conf/zkdeploy-agent.service.
    """
    from zkdeploy.agent.daemon import Agent
    from zkdeploy.agent.lbcheck import serve_agent_checks

    try:
        config = load_agent_config(config_path)
        logs.setup(fmt=config.log_format, node=config.node, level=logging.DEBUG if verbose else logging.INFO)
        daemon = Agent(config)
        signal.signal(signal.SIGTERM, lambda *_: daemon.stop())
        signal.signal(signal.SIGINT, lambda *_: daemon.stop())
        checks = serve_agent_checks(config)
        try:
            daemon.run()
        finally:
            if checks is not None:
                checks.close()
    except ZkdeployError as exc:
        error(str(exc))
        sys.exit(exc.exit_code)
