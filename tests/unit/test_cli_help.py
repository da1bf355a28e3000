"""Every command, option and argument of ``zkdeploy`` explains itself in ``--help`` (issue 14,
defect 10: "several options have no help text").  The whole click tree is walked, so a command or
option added later without help fails here, by name."""

from __future__ import annotations

import re
from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from zkdeploy.cli.main import cli


def walk(command: click.Command, path: tuple[str, ...] = ("zkdeploy",)) -> Iterator[tuple[tuple[str, ...],
                                                                                          click.Command]]:
    yield path, command
    if isinstance(command, click.Group):  # through list/get_command: the top group loads its commands lazily
        ctx = click.Context(command)
        for name in sorted(command.list_commands(ctx)):
            sub = command.get_command(ctx, name)
            assert sub is not None, name
            yield from walk(sub, (*path, name))


COMMANDS = list(walk(cli))
IDS = [" ".join(path) for path, _ in COMMANDS]


def test_the_walk_reaches_nested_commands() -> None:
    names = set(IDS)
    assert {"zkdeploy rollout status", "zkdeploy nodes forget", "zkdeploy journal undo", "zkdeploy deploy"} <= names


def _argument_words(command: click.Command, argument: click.Argument) -> list[str]:
    """What a command's help must name for one of its arguments: the first word of its metavar
    (SERVICE, DEPLOY, CHANGE_ID...), or every choice of a choice argument."""
    if isinstance(argument.type, click.Choice):
        return [str(c) for c in argument.type.choices]
    metavar = argument.make_metavar(click.Context(command))
    return [w for w in re.split(r"[^A-Z_]+", metavar) if w][:1]


def problems(command: click.Command) -> list[str]:
    """What ``--help`` leaves unexplained: no help text for the command, options without help, and
    arguments (click gives them no help of their own) that the command's help does not name."""
    text = (command.help or "").strip()
    found = [] if text else ["the command has no help text (its docstring)"]
    found += [f"option {'/'.join(p.opts)} has no help" for p in command.params
              if isinstance(p, click.Option) and not p.hidden and not (p.help or "").strip()]
    found += [f"argument {a.name}: the help does not name {word}" for a in command.params
              if isinstance(a, click.Argument) for word in _argument_words(command, a) if word not in text]
    return found


@pytest.mark.parametrize("path, command", COMMANDS, ids=IDS)
def test_every_command_option_and_argument_is_explained(path: tuple[str, ...], command: click.Command) -> None:
    assert problems(command) == [], " ".join(path)


def test_what_is_left_unexplained_is_found() -> None:
    """The check can fail: a command without help, a bare option and an unnamed argument are found."""
    bare = click.Command("bare", params=[click.Option(["--quiet"], is_flag=True), click.Argument(["node"])])
    assert problems(bare) == ["the command has no help text (its docstring)", "option --quiet has no help",
                              "argument node: the help does not name NODE"]
    named = click.Command("named", help="Forget NODE.", params=[click.Argument(["node"]),
                                                               click.Option(["--quiet"], help="Say less.")])
    assert problems(named) == []


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=IDS)
def test_help_prints_and_exits_0(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path[1:], "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and "Traceback" not in result.output


def test_shell_completion_as_the_readme_documents_it_completes_commands_and_options() -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).parent / "zkdeploy"
    script = subprocess.run([str(exe)], env={**os.environ, "_ZKDEPLOY_COMPLETE": "bash_source"},
                            capture_output=True, text=True, timeout=60, check=True).stdout
    assert "_zkdeploy_completion" in script and "complete " in script
    words = subprocess.run([str(exe)], env={**os.environ, "_ZKDEPLOY_COMPLETE": "bash_complete",
                                            "COMP_WORDS": "zkdeploy roll", "COMP_CWORD": "1"},
                           capture_output=True, text=True, timeout=60, check=True).stdout
    assert "plain,rollback" in words and "plain,rollout" in words
    words = subprocess.run([str(exe)], env={**os.environ, "_ZKDEPLOY_COMPLETE": "bash_complete",
                                            "COMP_WORDS": "zkdeploy deploy --ma", "COMP_CWORD": "2"},
                           capture_output=True, text=True, timeout=60, check=True).stdout
    assert "plain,--max-failures" in words


def test_the_agent_command_loads_neither_the_other_commands_nor_their_libraries() -> None:
    """``zkdeploy agent`` runs on every node for ever: what it imports is what it holds in memory."""
    import subprocess
    import sys

    probe = ("import sys; from zkdeploy.cli.main import load_command; load_command('agent'); "
             "import zkdeploy.agent.daemon, zkdeploy.agent.lbcheck; "
             "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('rich', 'cryptography', 'libtorrent') or m.startswith('zkdeploy.cli.'))))")
    loaded = set(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                                check=True).stdout.split())
    assert loaded == {"zkdeploy.cli.agent_cmd", "zkdeploy.cli.context", "zkdeploy.cli.main", "zkdeploy.cli.output"}


def test_the_readme_names_every_command_and_no_other() -> None:
    """``zkdeploy --help`` and the README agree: every command is in the README's command table, and
    every command the README shows in code exists."""
    from pathlib import Path

    from zkdeploy.cli.main import COMMANDS

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    shown = set(re.findall(r"`zkdeploy ([a-z][a-z-]*)", readme))
    assert shown == set(COMMANDS)
    ctx = click.Context(cli)
    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        assert command is not None and command.help, name
