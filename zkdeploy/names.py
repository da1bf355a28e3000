"""Names that become directory names and ZooKeeper path components.

Service, version and node names end up in paths on every host
(``<data>/releases/<service>/<version>``) and in znode paths, so they are
checked once, here, against a conservative pattern.
"""

from __future__ import annotations

import re

from zkdeploy.errors import UnsafeNameError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


def is_safe_name(value: str) -> bool:
    """True when ``value`` can be used as one path component anywhere."""
    return bool(_NAME.match(value)) and ".." not in value


def check_name(kind: str, value: object) -> str:
    """Return ``value`` if it is a safe name, else raise UnsafeNameError naming ``kind``."""
    if not isinstance(value, str) or not is_safe_name(value):
        raise UnsafeNameError(
            f"invalid {kind} name {value!r}: use 1-128 letters, digits, '.', '_', '+' or '-', "
            "starting with a letter or digit, and no '..'"
        )
    return value
