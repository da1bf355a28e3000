"""Catalog and agent files: valid files load; every problem is reported at once with its file and key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from zkdeploy.config import load_agent_config, load_catalog, parse_catalog
from zkdeploy.errors import ConfigError

CATALOG = """\
services:
  db:
    quorum: 1
    start: "postgres -D {release}/data"
    stop_timeout: 90
  web:
    depends_on: db
    quorum: "67%"
    start: "{release}/bin/web --port {port}"
    health_checks:
      - http: "http://127.0.0.1:{port}/health"
        retries: 3
        interval: 0.5
      - tcp: "127.0.0.1:{port}"
      - command: "{release}/bin/check"
    pre_stop: ["curl -X POST http://127.0.0.1:{port}/drain"]
    post_start: ["echo started {version}"]
    keep_releases: 5
  cron:
    managed: false
    start: systemctl start cron
    stop: systemctl stop cron
    quorum: 0
    depends_on: [db, web]
"""

AGENT = """\
node: node-1
data_dir: /var/lib/zkdeploy
services: [web, db]
address: 10.0.0.5
zookeeper:
  hosts: "zk1:2181,zk2:2181"
  root: /prod/dc
  session_timeout: 20
labels:
  rack: r1
  team: payments
vars:
  port: 8080
  region: eu
log_format: json
"""


def _write(tmp_path: Path, text: str, name: str = "catalog.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def _catalog_error(tmp_path: Path, text: str) -> ConfigError:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_catalog(path)
    assert info.value.exit_code == 2
    return info.value


def _agent_error(tmp_path: Path, text: str) -> ConfigError:
    path = _write(tmp_path, text, "agent.yaml")
    with pytest.raises(ConfigError) as info:
        load_agent_config(path)
    assert info.value.exit_code == 2
    return info.value


# --------------------------------------------------------------------------- valid files


def test_valid_catalog_loads(tmp_path: Path) -> None:
    catalog = load_catalog(_write(tmp_path, CATALOG))
    assert set(catalog.services) == {"db", "web", "cron"}
    web = catalog.services["web"]
    assert web.depends_on == ("db",)
    assert web.quorum == "67%"
    assert [hc.kind for hc in web.health_checks] == ["http", "tcp", "command"]
    assert web.health_checks[0].target == "http://127.0.0.1:{port}/health"
    assert (web.health_checks[0].retries, web.health_checks[0].interval, web.health_checks[0].timeout) == (3, 0.5, 2.0)
    assert web.health_checks[1].retries == 30
    assert web.keep_releases == 5
    assert web.managed
    db = catalog.services["db"]
    assert (db.keep_releases, db.stop, db.stop_timeout, db.start_timeout) == (3, None, 90.0, 60.0)
    cron = catalog.services["cron"]
    assert not cron.managed and cron.stop == "systemctl stop cron"
    assert catalog.graph() == {"db": (), "web": ("db",), "cron": ("db", "web")}


def test_valid_agent_file_loads(tmp_path: Path) -> None:
    config = load_agent_config(_write(tmp_path, AGENT, "agent.yaml"))
    assert config.node == "node-1"
    assert config.services == ("web", "db")
    assert config.zookeeper.hosts == "zk1:2181,zk2:2181"
    assert config.zookeeper.root == "/prod/dc"
    assert config.zookeeper.session_timeout == 20
    assert config.labels.rack == "r1"
    assert config.labels.model_dump()["team"] == "payments"
    assert config.vars == {"port": 8080, "region": "eu"}
    assert config.log_format == "json"


def test_minimal_agent_file_gets_defaults(tmp_path: Path) -> None:
    config = load_agent_config(_write(tmp_path, "node: n1\ndata_dir: /d\nservices: []\n", "agent.yaml"))
    assert config.zookeeper.hosts == "127.0.0.1:2181"
    assert config.zookeeper.root == "/dc"
    assert config.address == "127.0.0.1"
    assert config.log_format == "plain"
    assert config.vars == {}


# --------------------------------------------------------------------------- unreadable or malformed


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_catalog(path)
    assert str(info.value) == f"{path}: cannot read: No such file or directory"
    assert info.value.exit_code == 2


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    # a directory cannot be read as a file, even by root
    with pytest.raises(ConfigError) as info:
        load_agent_config(tmp_path)
    assert str(info.value) == f"{tmp_path}: cannot read: Is a directory"
    assert info.value.exit_code == 2


def test_malformed_yaml_names_the_file_and_line(tmp_path: Path) -> None:
    error = _catalog_error(tmp_path, "services:\n  web:\n    start: a: b\n    quorum: 1\n")
    message = str(error)
    assert message.startswith(f"{tmp_path / 'catalog.yaml'}: malformed YAML (line 3, column 13)")
    assert "mapping values are not allowed here" in message


def test_malformed_agent_yaml_names_the_file_and_line(tmp_path: Path) -> None:
    error = _agent_error(tmp_path, "node: n1\nservices: [web\ndata_dir: /d\n")
    assert str(error).startswith(f"{tmp_path / 'agent.yaml'}: malformed YAML (line 3,")


@pytest.mark.parametrize("text", ["", "- web\n- db\n", "just a string\n"])
def test_catalog_that_is_not_a_mapping(tmp_path: Path, text: str) -> None:
    error = _catalog_error(tmp_path, text)
    assert "expected a mapping with a 'services' key" in str(error)


def test_agent_file_that_is_not_a_mapping(tmp_path: Path) -> None:
    error = _agent_error(tmp_path, "- node\n")
    assert "expected a mapping of agent settings" in str(error)


# --------------------------------------------------------------------------- catalog problems


def test_unknown_keys_are_reported_with_their_key_path(tmp_path: Path) -> None:
    error = _catalog_error(tmp_path, """\
        services:
          web:
            quorum: 1
            start: run
            helth_checks: []
            health_checks:
              - http: http://x/
                retry: 3
        extra: true
        """)
    source = str(tmp_path / "catalog.yaml")
    assert f"{source}: services.web.helth_checks: unknown key" in error.problems
    assert f"{source}: services.web.health_checks.0.retry: unknown key" in error.problems
    assert f"{source}: extra: unknown key" in error.problems
    assert len(error.problems) == 3
    assert str(error).startswith(f"{source}: invalid catalog\n")
    for problem in error.problems:
        assert f"  - {problem}" in str(error)


def test_several_problems_are_reported_at_once(tmp_path: Path) -> None:
    error = _catalog_error(tmp_path, """\
        services:
          web:
            quorum: lots
            start: run
            health_checks:
              - timeout: 1
          db:
            quorum: 1
          cron:
            quorum: 1
            start: x
            managed: false
        """)
    source = str(tmp_path / "catalog.yaml")
    text = "\n".join(error.problems)
    assert f"{source}: services.web.quorum: quorum 'lots': expected a count or a percentage like '66%'" in text
    assert f"{source}: services.web.health_checks.0: a health check needs exactly one of" in text
    assert f"{source}: services.db.start: Field required" in text
    assert f"{source}: services.cron: a service with 'managed: false' needs a 'stop' command" in text
    assert len(error.problems) == 4


def test_dependency_cycle_is_named(tmp_path: Path) -> None:
    error = _catalog_error(tmp_path, """\
        services:
          a: {quorum: 1, start: x, depends_on: [b]}
          b: {quorum: 1, start: x, depends_on: [c]}
          c: {quorum: 1, start: x, depends_on: [a]}
          d: {quorum: 1, start: x}
        """)
    assert error.problems == [f"{tmp_path / 'catalog.yaml'}: dependency cycle: a -> b -> c -> a"]


def test_a_service_depending_on_itself(tmp_path: Path) -> None:
    error = _catalog_error(tmp_path, "services:\n  a: {quorum: 1, start: x, depends_on: a}\n")
    assert error.problems == [
        f"{tmp_path / 'catalog.yaml'}: services.a.depends_on: a service cannot depend on itself"]


def test_unknown_depends_on_and_cycle_reported_together(tmp_path: Path) -> None:
    error = _catalog_error(tmp_path, """\
        services:
          web: {quorum: 1, start: x, depends_on: [api, ghost]}
          api: {quorum: 1, start: x, depends_on: [web]}
        """)
    source = str(tmp_path / "catalog.yaml")
    assert error.problems == [
        f"{source}: services.web.depends_on: unknown service 'ghost'",
        f"{source}: dependency cycle: api -> web -> api",
    ]


def test_parse_catalog_names_its_source() -> None:
    with pytest.raises(ConfigError) as info:
        parse_catalog({"services": {"a": {"quorum": 1, "start": "x", "depends_on": ["b"]},
                                    "b": {"quorum": 1, "start": "x", "depends_on": ["a"]}}}, "inline")
    assert info.value.exit_code == 2
    assert info.value.problems == ["inline: dependency cycle: a -> b -> a"]
    assert str(info.value) == "inline: invalid catalog\n  - inline: dependency cycle: a -> b -> a"


@pytest.mark.parametrize("check", [
    "{timeout: 1}",
    "{http: 'http://x/', tcp: 'x:1'}",
    "{tcp: 'x:1', command: 'true'}",
    "{http: ''}",
])
def test_health_check_needs_exactly_one_kind(tmp_path: Path, check: str) -> None:
    error = _catalog_error(tmp_path, f"services:\n  web:\n    quorum: 1\n    start: x\n    health_checks:\n"
                                     f"      - {check}\n")
    assert error.problems == [f"{tmp_path / 'catalog.yaml'}: services.web.health_checks.0: "
                              "a health check needs exactly one of 'http', 'tcp' or 'command'"]


@pytest.mark.parametrize("quorum, words", [
    ("'150%'", "a percentage must be between 0% and 100%"),
    ("-1", "must not be negative"),
    ("most", "expected a count or a percentage"),
])
def test_bad_quorum(tmp_path: Path, quorum: str, words: str) -> None:
    error = _catalog_error(tmp_path, f"services:\n  web:\n    quorum: {quorum}\n    start: x\n")
    assert len(error.problems) == 1
    assert error.problems[0].startswith(f"{tmp_path / 'catalog.yaml'}: services.web.quorum")
    assert words in error.problems[0]


@pytest.mark.parametrize("quorum", ["true", "yes", "false"])
def test_boolean_quorum_is_refused(tmp_path: Path, quorum: str) -> None:
    # parse_quorum refuses booleans; the catalog must not turn `quorum: yes` into a count of 1
    error = _catalog_error(tmp_path, f"services:\n  web:\n    quorum: {quorum}\n    start: x\n")
    assert any("services.web.quorum" in p for p in error.problems)


def test_missing_quorum_and_start(tmp_path: Path) -> None:
    error = _catalog_error(tmp_path, "services:\n  web: {stop: x}\n")
    source = str(tmp_path / "catalog.yaml")
    assert error.problems == [f"{source}: services.web.quorum: Field required",
                              f"{source}: services.web.start: Field required"]


def test_unmanaged_service_needs_stop(tmp_path: Path) -> None:
    error = _catalog_error(tmp_path, "services:\n  web: {quorum: 1, start: x, managed: false}\n")
    assert error.problems == [
        f"{tmp_path / 'catalog.yaml'}: services.web: a service with 'managed: false' needs a 'stop' command"]


@pytest.mark.parametrize("name", ["../x", ".hidden", "a/b", "'..'"])
def test_unsafe_service_name(tmp_path: Path, name: str) -> None:
    error = _catalog_error(tmp_path, f"services:\n  {name}: {{quorum: 1, start: x}}\n")
    assert len(error.problems) == 1
    key = name.strip("'")
    assert error.problems[0].startswith(f"{tmp_path / 'catalog.yaml'}: services.{key}: invalid service name")


def test_unsafe_name_reported_alongside_other_problems(tmp_path: Path) -> None:
    # "every problem at once": a bad name must not hide behind another service's typo
    error = _catalog_error(tmp_path, """\
        services:
          ../x: {quorum: 1, start: x}
          web: {quorum: 1, start: x, bogus: 1}
        """)
    text = "\n".join(error.problems)
    assert "services.web.bogus: unknown key" in text
    assert "invalid service name '../x'" in text


def test_unknown_depends_on_reported_alongside_other_problems(tmp_path: Path) -> None:
    # "every problem at once": cross-service checks must not hide behind a typo elsewhere
    error = _catalog_error(tmp_path, """\
        services:
          web: {quorum: 1, start: x, depends_on: [ghost]}
          db: {quorum: 1, start: x, bogus: 1}
        """)
    text = "\n".join(error.problems)
    assert "services.db.bogus: unknown key" in text
    assert "services.web.depends_on: unknown service 'ghost'" in text


def test_bad_template_is_reported(tmp_path: Path) -> None:
    error = _catalog_error(tmp_path, "services:\n  web: {quorum: 1, start: 'run {release'}\n")
    assert len(error.problems) == 1
    assert error.problems[0].startswith(f"{tmp_path / 'catalog.yaml'}: services.web: bad template 'run {{release'")


def test_out_of_range_numbers(tmp_path: Path) -> None:
    error = _catalog_error(tmp_path, """\
        services:
          web:
            quorum: 1
            start: x
            keep_releases: 0
            health_checks: [{tcp: 'x:1', timeout: 0, retries: 0}]
        """)
    keys = sorted(p.split(": ")[1] for p in error.problems)
    assert keys == ["services.web.health_checks.0.retries", "services.web.health_checks.0.timeout",
                    "services.web.keep_releases"]


# --------------------------------------------------------------------------- agent problems


def test_reserved_vars_in_the_agent_file(tmp_path: Path) -> None:
    error = _agent_error(tmp_path, "node: n1\ndata_dir: /d\nservices: [web]\n"
                                   "vars: {release: /x, node: other, port: 1}\n")
    source = str(tmp_path / "agent.yaml")
    assert error.problems == [f"{source}: vars.node: reserved template field",
                              f"{source}: vars.release: reserved template field"]
    assert str(error).startswith(f"{source}: invalid agent file")


def test_agent_file_problems_are_reported_at_once(tmp_path: Path) -> None:
    error = _agent_error(tmp_path, """\
        node: ../n1
        services: [web, ../db]
        zookeeper: {root: 'dc/', hosts: 'zk:2181', sesion_timeout: 5}
        log_format: xml
        cycle_interval: 0
        """)
    source = str(tmp_path / "agent.yaml")
    keys = sorted(p.removeprefix(source + ": ").split(":")[0] for p in error.problems)
    assert keys == ["cycle_interval", "data_dir", "log_format", "node", "services", "zookeeper.root",
                    "zookeeper.sesion_timeout"]
    text = "\n".join(error.problems)
    assert "invalid node name '../n1'" in text
    assert "invalid service name '../db'" in text
    assert "zookeeper.sesion_timeout: unknown key" in text


@pytest.mark.parametrize("root", ["/", "/dc", "/a/b"])
def test_zookeeper_root_accepted(tmp_path: Path, root: str) -> None:
    text = f"node: n1\ndata_dir: /d\nservices: []\nzookeeper: {{root: '{root}'}}\n"
    config = load_agent_config(_write(tmp_path, text, "agent.yaml"))
    assert config.zookeeper.root == root


@pytest.mark.parametrize("root", ["dc", "/dc/", "/a//b", "/a/../b"])
def test_zookeeper_root_refused(tmp_path: Path, root: str) -> None:
    error = _agent_error(tmp_path, f"node: n1\ndata_dir: /d\nservices: []\nzookeeper: {{root: '{root}'}}\n")
    assert len(error.problems) == 1
    assert error.problems[0].startswith(f"{tmp_path / 'agent.yaml'}: zookeeper.root:")
