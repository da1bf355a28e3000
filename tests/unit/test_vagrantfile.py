"""vagrant/: the multi-VM lab parses and its catalog is valid.

Nothing here starts a VM.  The Vagrantfile is Ruby; `ruby -c` checks its
syntax.  Ruby is a test dependency (scripts/setup and .ci/run install it),
so a machine without it fails this test with the command that fixes it
rather than skipping it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tarfile
from pathlib import Path

from zkdeploy.config import load_catalog

VAGRANT = Path(__file__).resolve().parents[2] / "vagrant"
VAGRANTFILE = VAGRANT / "Vagrantfile"


def ruby() -> str:
    path = shutil.which("ruby")
    assert path is not None, "ruby is missing: apt-get install -y ruby (scripts/setup installs it)"
    return path


def test_the_vagrantfile_is_valid_ruby() -> None:
    result = subprocess.run([ruby(), "-c", str(VAGRANTFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "Syntax OK" in result.stdout, result.stdout + result.stderr


def test_ruby_c_catches_a_broken_vagrantfile(tmp_path: Path) -> None:
    """The check above can fail: an unclosed block is reported."""
    broken = tmp_path / "Vagrantfile"
    broken.write_text(VAGRANTFILE.read_text().rstrip().removesuffix("end"))
    result = subprocess.run([ruby(), "-c", str(broken)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0


def test_the_lab_has_a_three_server_ensemble_and_labelled_agents() -> None:
    text = VAGRANTFILE.read_text()
    assert 'BOX = "debian/bookworm64"' in text
    assert re.search(r"ZK = \(1\.\.3\)", text)
    assert 'ENV.fetch("ZKDEPLOY_AGENTS"' in text
    # each agent's file carries the labels waves and filters select on
    for label in ("rack: $RACK", "dc: $DC", "env: $ENVIRONMENT"):
        assert label in text
    # the agents run under the unit from conf/
    assert "conf/zkdeploy-agent.service" in text and "systemctl enable zkdeploy-agent" in text


def test_the_lab_catalog_is_valid_and_uses_the_agents_vars() -> None:
    catalog = load_catalog(VAGRANT / "services.yaml")
    hello = catalog.services["hello"]
    assert hello.managed and "{hello_port}" in hello.start
    assert "hello_port: 8080" in VAGRANTFILE.read_text()


def test_the_payload_script_builds_a_release_with_its_version(tmp_path: Path) -> None:
    result = subprocess.run(["bash", str(VAGRANT / "make-payload.sh"), "2.0", str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    archive = tmp_path / "hello-2.0.tar.gz"
    assert result.stdout.strip() == str(archive)
    with tarfile.open(archive) as tar:
        member = tar.extractfile("www/version.txt")
        assert member is not None and member.read() == b"2.0\n"
