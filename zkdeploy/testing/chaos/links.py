"""Each agent's own link to ZooKeeper: a fleet whose agents reach the ensemble through proxies.

:class:`ProxiedFleet` is a :class:`~zkdeploy.demo.fleet.LocalFleet` whose every host gets its own
:class:`~zkdeploy.testing.tcpproxy.ProxyGroup` (one proxy per ZooKeeper server) and whose agent's
``zookeeper.hosts`` names those proxies, so one agent's link can be cut, or its replies dropped,
while its host, its services and every other agent go on.  The operator's CLI and the chaos
runner's own client talk to the ensemble directly (``fleet.zk_hosts``).  Nothing starts on
import; :meth:`ProxiedFleet.stop` stops the agents first, then the proxies.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from zkdeploy.demo.fleet import DemoService, Host, LocalFleet
from zkdeploy.testing.tcpproxy import ProxyGroup, ProxyLoop, parse_hosts


class ProxiedFleet(LocalFleet):
    """A LocalFleet whose agents each connect to ZooKeeper through their own proxies."""

    def __init__(self, workdir: Path, zk_hosts: str, services: list[DemoService], size: int = 6,
                 root: str = "/dc", session_timeout: float = 4.0, env: dict[str, str] | None = None) -> None:
        super().__init__(workdir, zk_hosts, services, size=size, root=root, session_timeout=session_timeout,
                         env=env)
        self.proxy_loop = ProxyLoop()
        upstreams = parse_hosts(zk_hosts)
        self.links: dict[str, ProxyGroup] = {h.name: ProxyGroup(self.proxy_loop, upstreams) for h in self.hosts}

    def write_configs(self) -> None:
        """The fleet's files, then each agent's ``zookeeper.hosts`` pointed at its own proxies."""
        super().write_configs()
        for host in self.hosts:
            config = yaml.safe_load(host.config.read_text())
            config["zookeeper"]["hosts"] = self.links[host.name].hosts
            host.config.write_text(yaml.safe_dump(config, sort_keys=False))

    # ``python -m`` puts the working directory first on sys.path, ahead of PYTHONPATH: run the agents
    # and the CLI from the fleet's own directories, so that a code snapshot (--snapshot) is what runs
    # even when the runner is started from a source tree
    def start_agent(self, host: Host, extra_env: dict[str, str] | None = None) -> None:
        with open(host.log, "ab") as log:
            host.process = subprocess.Popen(
                [sys.executable, "-m", "zkdeploy", "agent", "--config", str(host.config)],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env, **(extra_env or {})},
                start_new_session=True, cwd=host.root,
            )

    def cli(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "zkdeploy", "--zk", self.zk_hosts, "--root", self.zk_root, *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **self.env}, cwd=self.workdir)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def stop(self) -> None:
        """Stop the agents and their services (through LocalFleet.stop), then every proxy."""
        try:
            super().stop()
        finally:
            for group in self.links.values():
                group.close()
            self.proxy_loop.close()
