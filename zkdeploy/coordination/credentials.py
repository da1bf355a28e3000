"""Who a client is to ZooKeeper: credentials from a protected file, and the TLS settings.

A credentials file (YAML) holds the client's identities; nothing secret is
ever taken from the command line, the environment or the configuration file
itself, and nothing secret is logged (``Credentials`` has no password in its
``repr``).  The file must not be readable or writable by others, nor writable
by its group, or it is refused::

    # /etc/zkdeploy/zk-auth.yaml   (chmod 600)
    role: agent                    # operator | steward | agent | viewer
    user: zkdeploy-agent           # the role's digest identity, shared by the role
    password: "..."
    node_user: web1                # agents: this node's own digest identity (or a client certificate)
    node_password: "..."

``role`` is informative (what the server enforces is the ACL policy under the
fleet root, see zkdeploy.coordination.acls); ``user``/``password`` is the
identity that carries the role's rights; ``node_user``/``node_password`` is
the identity that owns the nodes this client creates (its presence, state,
slots...).  With a TLS client certificate the certificate's subject is that
owning identity instead (ZooKeeper authenticates it as ``x509``).
"""

from __future__ import annotations

import base64
import hashlib
import stat
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from zkdeploy.errors import ConfigError
from zkdeploy.strictyaml import load_yaml

ROLES = ("operator", "steward", "agent", "viewer")
_KEYS = {"role", "user", "password", "node_user", "node_password"}


def digest_id(user: str, password: str) -> str:
    """The ACL id ZooKeeper's digest scheme stores for ``user:password`` (``user:base64(sha1)``)."""
    hashed = base64.b64encode(hashlib.sha1(f"{user}:{password}".encode()).digest()).decode()
    return f"{user}:{hashed}"


def check_private(path: Path, what: str) -> None:
    """ConfigError unless ``path`` is a regular file that others cannot read or write and
    its group cannot write (a secret readable by every user of the host is no secret)."""
    try:
        st = path.stat()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{what} {path}: not a regular file")
    if st.st_mode & 0o027:
        raise ConfigError(f"{what} {path} is accessible to other users (mode {stat.S_IMODE(st.st_mode):o}); "
                          f"run: chmod 600 {path}")


@dataclass(frozen=True)
class Credentials:
    """A client's ZooKeeper identities (loaded from a protected credentials file)."""

    role: str
    user: str
    password: str = field(repr=False)
    node_user: str | None = None
    node_password: str | None = field(default=None, repr=False)
    source: str = ""

    @classmethod
    def load(cls, path: str | Path) -> Credentials:
        """Read a credentials file; ConfigError (naming the file and key) when it is unsafe or malformed."""
        p = Path(path).expanduser()
        check_private(p, "credentials file")
        try:
            data = load_yaml(p.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"credentials file {p}: cannot read it: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"credentials file {p}: expected a mapping with role, user and password")
        problems = [f"{p}: unknown key '{k}'" for k in sorted(set(data) - _KEYS)]
        role = data.get("role")
        if role not in ROLES:
            problems.append(f"{p}: role: must be one of {', '.join(ROLES)}")
        for key in ("user", "password"):
            if not isinstance(data.get(key), str) or not data.get(key):
                problems.append(f"{p}: {key}: required (a non-empty string)")
        if ("node_user" in data) != ("node_password" in data):
            problems.append(f"{p}: node_user and node_password go together")
        for key in ("user", "node_user"):
            if ":" in str(data.get(key) or ""):
                problems.append(f"{p}: {key}: must not contain ':'")
        if problems:
            raise ConfigError("; ".join(problems))
        return cls(role=str(role), user=data["user"], password=str(data["password"]),
                   node_user=data.get("node_user"),
                   node_password=None if data.get("node_password") is None else str(data["node_password"]),
                   source=str(p))

    def auth_data(self) -> list[tuple[str, str]]:
        """What the client sends to ZooKeeper (``addauth digest``) once connected."""
        out = [("digest", f"{self.user}:{self.password}")]
        if self.node_user and self.node_password is not None:
            out.append(("digest", f"{self.node_user}:{self.node_password}"))
        return out

    @property
    def role_id(self) -> tuple[str, str]:
        """(scheme, id) of the role identity, as ACLs name it."""
        return "digest", digest_id(self.user, self.password)

    @property
    def node_id(self) -> tuple[str, str] | None:
        """(scheme, id) of this node's own digest identity, if it has one."""
        if self.node_user and self.node_password is not None:
            return "digest", digest_id(self.node_user, self.node_password)
        return None


@dataclass(frozen=True)
class TlsOptions:
    """TLS to ZooKeeper's secure port: the CA to trust, and optionally a client certificate.

    Certificates are always verified and the server's host name is always
    checked against its certificate; there is no switch to turn either off.
    """

    ca: str
    cert: str | None = None
    key: str | None = None
    key_password_file: str | None = None

    def key_password(self) -> str | None:
        if self.key_password_file is None:
            return None
        p = Path(self.key_password_file)
        check_private(p, "key password file")
        return p.read_text().strip()

    def check(self) -> None:
        """ConfigError unless the files exist and the private key is protected."""
        for what, value in (("tls.ca", self.ca), ("tls.cert", self.cert)):
            if value is not None and not Path(value).is_file():
                raise ConfigError(f"{what}: {value}: no such file")
        if (self.cert is None) != (self.key is None):
            raise ConfigError("tls.cert and tls.key go together")
        if self.key is not None:
            check_private(Path(self.key), "tls.key")

    def subject(self) -> str | None:
        """The client certificate's subject as ZooKeeper's x509 scheme names it (RFC 2253), if any."""
        if self.cert is None:
            return None
        from cryptography import x509

        try:
            cert = x509.load_pem_x509_certificate(Path(self.cert).read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"tls.cert: {self.cert}: not a PEM certificate: {exc}") from None
        return cert.subject.rfc4514_string()


@dataclass(frozen=True)
class Security:
    """Everything a client needs to authenticate itself: credentials, TLS, or both (or neither)."""

    credentials: Credentials | None = None
    tls: TlsOptions | None = None

    @property
    def owner_id(self) -> tuple[str, str] | None:
        """The identity that owns the nodes this client creates: the node's digest identity, else
        the client certificate's subject, else the role identity."""
        if self.credentials is not None and self.credentials.node_id is not None:
            return self.credentials.node_id
        if self.tls is not None and self.tls.cert is not None:
            subject = self.tls.subject()
            if subject:
                return "x509", subject
        return self.credentials.role_id if self.credentials is not None else None

    @property
    def identities(self) -> frozenset[tuple[str, str]]:
        """Every identity this client authenticates as: the role's, the node's, its certificate's."""
        ids = set()
        if self.credentials is not None:
            ids.add(self.credentials.role_id)
            if self.credentials.node_id is not None:
                ids.add(self.credentials.node_id)
        subject = self.tls.subject() if self.tls is not None else None
        if subject:
            ids.add(("x509", subject))
        return frozenset(ids)
