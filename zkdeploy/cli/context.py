"""Shared CLI plumbing: the global options, the ZooKeeper store, error → exit code."""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import click

from zkdeploy.cli.output import error
from zkdeploy.coordination import Store
from zkdeploy.coordination.credentials import Credentials, Security, TlsOptions
from zkdeploy.coordination.layout import DEPLOY_PREFIX
from zkdeploy.errors import ConfigError, Declined, ZkdeployError


@dataclass
class Ctx:
    zk: str
    root: str
    timeout: float
    auth_file: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    _store: Store | None = field(default=None, repr=False)

    def security(self) -> Security:
        """The credentials (``--zk-auth-file``) and TLS options (``--zk-tls-*``) to connect with."""
        if (self.tls_cert or self.tls_key) and not self.tls_ca:
            raise ConfigError("--zk-tls-cert and --zk-tls-key need --zk-tls-ca")
        tls = TlsOptions(self.tls_ca, self.tls_cert, self.tls_key) if self.tls_ca else None
        return Security(Credentials.load(self.auth_file) if self.auth_file else None, tls)

    def store(self) -> Store:
        """Connect on first use (bounded by ``--zk-timeout``)."""
        if self._store is None:
            self._store = Store.connect(self.zk, self.root, self.security(), connect_timeout=self.timeout,
                                        operation_timeout=self.timeout, session_timeout=max(10.0, self.timeout))
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


pass_ctx = click.make_pass_decorator(Ctx)

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")

#: the one confirmation option of every destructive command: both spellings mean the same
force_option = click.option("--force", "--yes", "-y", "force", is_flag=True, help="Do not ask for confirmation.")

#: exit code of a command interrupted by Ctrl-C (128 + SIGINT), as shells report it
EXIT_INTERRUPTED = 130


def confirm(question: str, force: bool) -> None:
    """Return when ``force`` is set or the operator answers yes to ``question`` (asked on stderr, so
    that ``--json`` output stays clean); raise Declined (exit 2) for no, end of input or Ctrl-C at the
    prompt.  Ask before anything is written: a declined command changes nothing."""
    if force:
        return
    try:
        yes = click.confirm(question, err=True)
    except click.Abort:  # end of input or Ctrl-C at the prompt: no answer is no
        yes = False
    if not yes:
        raise Declined("not confirmed: nothing was changed (--yes does not ask)")

_DEPLOY_NAME = re.compile(r"^(?:d-)?(\d{1,10})$")


def deploy_name(text: str) -> str:
    """The full name of the deploy ``text`` names: ``13``, ``d-13`` and ``d-0000000013`` all give
    ``d-0000000013``.  Anything else is a ConfigError (exit 2), raised before connecting."""
    match = _DEPLOY_NAME.match(text.strip())
    if not match:
        raise ConfigError(f"{text!r} is not a deploy name: give its number (13) or its name (d-0000000013); "
                          f"`zkdeploy deploys` lists them")
    return f"{DEPLOY_PREFIX}{int(match.group(1)):010d}"


def check_root(root: str) -> str:
    """``--root``: an absolute znode path without a trailing slash or empty segments; ConfigError if not."""
    if not root.startswith("/") or (root != "/" and (root.endswith("/") or "//" in root)):
        raise ConfigError(f"--root {root!r}: expected an absolute znode path such as /dc")
    return root


def positive_seconds(option: str, value: float) -> float:
    """``value`` if it is a finite number of seconds above 0; ConfigError (exit 2) otherwise."""
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"{option} {value:g}: expected a number of seconds greater than 0")
    return value


def check_globals(root: str, zk_timeout: float) -> None:
    """The group's own options (``--root``, ``--zk-timeout``), checked before any command runs:
    a bad one is a usage error (exit 2) with one line saying what is expected."""
    try:
        check_root(root)
        positive_seconds("--zk-timeout", zk_timeout)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The one error-to-exit-code path of the commands: a ZkdeployError becomes its message on
    stderr and its exit code; a declined prompt (click.Abort) exits 2 like Declined; Ctrl-C that
    the command did not handle itself exits 130.  The ZooKeeper connection is closed either way."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ZkdeployError as exc:
            error(str(exc))
            sys.exit(exc.exit_code)
        except click.Abort:  # a prompt answered no (or not at all) by code that does not use confirm()
            error("not confirmed: nothing was changed (--yes does not ask)")
            sys.exit(Declined.exit_code)
        except KeyboardInterrupt:
            error("interrupted")
            sys.exit(EXIT_INTERRUPTED)
        finally:
            ctx = click.get_current_context(silent=True)
            obj = ctx.find_object(Ctx) if ctx else None
            if obj is not None:
                obj.close()

    return wrapper
