"""``zkdeploy agent``: run this node's agent in the foreground."""

from __future__ import annotations

import json
import logging
import signal
import sys

import click

from zkdeploy.cli.output import error
from zkdeploy.config.loader import load_agent_config
from zkdeploy.errors import ZkdeployError


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"ts": record.created, "level": record.levelname, "logger": record.name,
                           "msg": record.getMessage()})


def setup_logging(fmt: str, node: str, verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {node} %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("kazoo").setLevel(logging.WARNING)


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

    try:
        config = load_agent_config(config_path)
        setup_logging(config.log_format, config.node, verbose)
        daemon = Agent(config)
        signal.signal(signal.SIGTERM, lambda *_: daemon.stop())
        signal.signal(signal.SIGINT, lambda *_: daemon.stop())
        daemon.run()
    except ZkdeployError as exc:
        error(str(exc))
        sys.exit(exc.exit_code)
