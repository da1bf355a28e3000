"""Shared CLI plumbing: the global options, the ZooKeeper store, error → exit code."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import click

from zkdeploy.cli.output import error
from zkdeploy.coordination import Store
from zkdeploy.coordination.credentials import Credentials, Security, TlsOptions
from zkdeploy.errors import ConfigError, ZkdeployError


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


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a ZkdeployError into a message on stderr and its exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ZkdeployError as exc:
            error(str(exc))
            sys.exit(exc.exit_code)
        finally:
            ctx = click.get_current_context(silent=True)
            obj = ctx.find_object(Ctx) if ctx else None
            if obj is not None:
                obj.close()

    return wrapper
