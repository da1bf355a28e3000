#!/usr/bin/env python3
"""Benchmark: the same rolling restart by zkdeploy and by Ansible (``serial``), in one run.

N hosts (directories on this machine), the same service (the demo HTTP
service of zkdeploy/demo, with the same start and stop delays), the same
steps per host: drain hook, stop, switch the release (a symlink), start,
health check (HTTP /health, polled every ``--health-interval`` s), undrain
hook.  Ansible runs a play with ``serial: k`` over a local-connection
inventory; zkdeploy runs N agents as processes on a private ZooKeeper with
quorum N - k.  Both move every host from release 1 to release 2; release 2
is unpacked on every host before either clock starts (zkdeploy: staged and
prefetched; Ansible: unpacked beside release 1).  Each clock runs from the
command (``zkdeploy deploy`` / ``ansible-playbook``) to the rollout done.

``ansible-core`` is installed into a benchmark-only virtualenv
(``--ansible-venv``, by default under ~/.cache) the first time.

Last line: ansible_seconds=<a> zkdeploy_seconds=<z> ratio=<z/a>
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zkdeploy.coordination import Store
from zkdeploy.demo.fleet import DemoService, LocalFleet, ServiceTiming, build_payload
from zkdeploy.demo.scenario import wait_deploys
from zkdeploy.testing.zkserver import ZkCluster, free_port

SERVICE = "app"

PLAYBOOK = """\
- hosts: fleet
  serial: {k}
  gather_facts: false
  tasks:
    - name: drain (pre-stop hook)
      ansible.builtin.shell: echo drain {service} {{{{ old }}}} >> {{{{ root }}}}/lb.log
    - name: stop the service
      ansible.builtin.shell: |
        pid=$(cat {{{{ root }}}}/app.pid)
        kill $pid
        # stopped once gone, or a zombie whose parent has not reaped it yet
        while kill -0 $pid 2>/dev/null && ! grep -q '^State:.*Z' /proc/$pid/status 2>/dev/null; do sleep 0.02; done
    - name: switch the release
      ansible.builtin.file:
        src: "{{{{ root }}}}/releases/{{{{ new }}}}"
        dest: "{{{{ root }}}}/current"
        state: link
        force: true
    - name: start the service
      ansible.builtin.shell: >
        cd {{{{ root }}}}/current &&
        setsid nohup {python} server.py --service {service} --version {{{{ new }}}} --node {{{{ inventory_hostname }}}}
        --port {{{{ port }}}} --start-delay {start} --stop-delay {stop} > {{{{ root }}}}/app.log 2>&1 &
        echo $! > {{{{ root }}}}/app.pid
    - name: health check
      ansible.builtin.shell: |
        url=http://127.0.0.1:{{{{ port }}}}/health
        for i in $(seq {retries}); do
          {python} -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1], timeout=1)" $url 2>/dev/null \\
            && exit 0
          sleep {interval}
        done
        exit 1
    - name: undrain (post-start hook)
      ansible.builtin.shell: echo undrain {service} {{{{ new }}}} >> {{{{ root }}}}/lb.log
"""


def ansible_venv(path: Path) -> Path:
    """The ansible-playbook of a benchmark-only virtualenv, made (and ansible-core installed) if needed."""
    playbook = path / "bin" / "ansible-playbook"
    if playbook.exists():
        return playbook
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=300)
    subprocess.run([str(path / "bin" / "pip"), "install", "--quiet", "ansible-core"], check=True, timeout=900)
    return playbook


def ansible_version(playbook: Path) -> str:
    out = subprocess.run([str(playbook), "--version"], capture_output=True, text=True, timeout=120).stdout
    return out.splitlines()[0] if out else "?"


def wait_healthy(port: int, timeout: float = 60.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the service on port {port} did not come up")


def run_ansible(workdir: Path, playbook_bin: Path, n: int, k: int, timing: ServiceTiming,
                interval: float) -> float:
    """Set up ``n`` hosts running release 1, then time ``ansible-playbook`` moving them to release 2."""
    payloads = {v: build_payload(workdir / "payloads" / f"{SERVICE}-{v}.tar.gz", SERVICE, v) for v in ("1", "2")}
    hosts: list[tuple[str, Path, int]] = []
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(n):
            name, root, port = f"node{i + 1:02d}", workdir / f"node{i + 1:02d}", free_port()
            for version, payload in payloads.items():
                dest = root / "releases" / version
                dest.mkdir(parents=True)
                with tarfile.open(payload) as tar:
                    tar.extractall(dest, filter="data")
            (root / "current").symlink_to(root / "releases" / "1")
            with open(root / "app.log", "wb") as log:
                proc = subprocess.Popen([sys.executable, "server.py", "--service", SERVICE, "--version", "1",
                                         "--node", name, "--port", str(port), "--start-delay", str(timing.start_delay),
                                         "--stop-delay", str(timing.stop_delay)],
                                        cwd=root / "current", stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
            procs.append(proc)
            (root / "app.pid").write_text(str(proc.pid))
            hosts.append((name, root, port))
        for _, _, port in hosts:
            wait_healthy(port)
        inventory = workdir / "inventory.ini"
        python = sys.executable
        inventory.write_text("[fleet]\n" + "".join(
            f"{name} ansible_connection=local ansible_python_interpreter={playbook_bin.parent / 'python'} "
            f"root={root} port={port} old=1 new=2\n" for name, root, port in hosts))
        play = workdir / "rollout.yml"
        play.write_text(PLAYBOOK.format(k=k, service=SERVICE, python=python, start=timing.start_delay,
                                        stop=timing.stop_delay, retries=int(60 / interval), interval=interval))
        env = {**os.environ, "ANSIBLE_HOST_KEY_CHECKING": "False", "ANSIBLE_RETRY_FILES_ENABLED": "False",
               "ANSIBLE_LOCAL_TEMP": str(workdir / "tmp"), "ANSIBLE_NOCOLOR": "1"}
        started = time.monotonic()
        proc = subprocess.run([str(playbook_bin), "-i", str(inventory), str(play), "--forks", str(max(5, k))],
                              capture_output=True, text=True, timeout=1800, env=env)
        seconds = time.monotonic() - started
        if proc.returncode != 0:
            raise RuntimeError(f"ansible-playbook exited {proc.returncode}:\n"
                               f"{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
        for _, root, port in hosts:
            import urllib.request

            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as reply:
                assert json.loads(reply.read())["version"] == "2", f"{root} does not run release 2"
        return seconds
    finally:
        for _, root, _ in hosts:
            try:
                os.killpg(int((root / "app.pid").read_text()), signal.SIGKILL)
            except (OSError, ValueError):
                pass
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def run_zkdeploy(workdir: Path, n: int, k: int, timing: ServiceTiming, interval: float) -> float:
    """``n`` agents as processes on a private ZooKeeper; time ``zkdeploy deploy`` of release 2 to done."""
    services = [DemoService(SERVICE, quorum=n - k, timing=timing, health_interval=interval,
                            health_retries=int(60 / interval))]
    with ZkCluster() as zk:
        fleet = LocalFleet(workdir, zk.hosts, services, size=n, root="/ansible-bench", session_timeout=6)
        store = Store.connect(zk.hosts, "/ansible-bench")
        try:
            fleet.write_configs()
            fleet.cli("services", "apply", str(fleet.catalog_file))
            fleet.start()
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and len(store.current(SERVICE)) < n:
                time.sleep(0.2)
            fleet.cli("stage", SERVICE, "1", str(fleet.payload(SERVICE, "1")))
            out = fleet.cli("deploy", f"{SERVICE}@1", "--json").stdout
            wait_deploys(store, [q["name"] for q in json.loads(out)["queued"]], 300)
            fleet.cli("stage", SERVICE, "2", str(fleet.payload(SERVICE, "2")))
            while time.monotonic() < deadline + 180 and len(store.holders(SERVICE, "2")) < n:
                time.sleep(0.2)
            time.sleep(1.0)
            started = time.time()
            out = fleet.cli("deploy", f"{SERVICE}@2", "--json").stdout
            finished = wait_deploys(store, [q["name"] for q in json.loads(out)["queued"]], 600)
            return finished - started
        finally:
            fleet.stop()
            store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=12)
    parser.add_argument("--down", type=int, default=2, help="k: Ansible's serial, and N minus zkdeploy's quorum")
    parser.add_argument("--start", type=float, default=0.3, help="seconds the service takes to start")
    parser.add_argument("--stop", type=float, default=0.2, help="seconds the service takes to stop")
    parser.add_argument("--health-interval", type=float, default=0.1)
    parser.add_argument("--ansible-venv", type=Path, default=Path.home() / ".cache" / "zkdeploy-bench" / "ansible")
    args = parser.parse_args()
    timing = ServiceTiming(start_delay=args.start, stop_delay=args.stop)
    playbook = ansible_venv(args.ansible_venv)
    tmp = Path(tempfile.mkdtemp(prefix="zkdeploy-vs-ansible-"))
    try:
        zkdeploy_seconds = run_zkdeploy(tmp / "zkdeploy", args.nodes, args.down, timing, args.health_interval)
        ansible_seconds = run_ansible(tmp / "ansible", playbook, args.nodes, args.down, timing, args.health_interval)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    batches = math.ceil(args.nodes / args.down)
    nominal = batches * (args.start + args.stop)
    print(f"nodes={args.nodes} down_at_once={args.down} batches={batches} service start={args.start}s "
          f"stop={args.stop}s health_interval={args.health_interval}s; {ansible_version(playbook)}")
    print(f"nominal_ideal_seconds={nominal:.2f} (batches x (start + stop))")
    print(f"zkdeploy: {zkdeploy_seconds:.2f}s, {(zkdeploy_seconds - nominal) / batches:.3f}s over nominal per batch")
    print(f"ansible:  {ansible_seconds:.2f}s, {(ansible_seconds - nominal) / batches:.3f}s over nominal per batch")
    print(f"ansible_seconds={ansible_seconds:.2f} zkdeploy_seconds={zkdeploy_seconds:.2f} "
          f"ratio={zkdeploy_seconds / ansible_seconds:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
