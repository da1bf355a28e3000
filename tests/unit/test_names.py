"""Names that become directory names and znode path components."""

from __future__ import annotations

import pytest

from zkdeploy.errors import ConfigError, UnsafeNameError
from zkdeploy.names import check_name, is_safe_name


@pytest.mark.parametrize("name", [
    "web", "Web-2", "api_v2", "1.0.3", "1.0.3+build.7", "2024-01-01_rc1", "a", "0", "x" * 128, "node.example.com",
])
def test_safe_names(name: str) -> None:
    assert is_safe_name(name)
    assert check_name("service", name) == name


@pytest.mark.parametrize("name", [
    "", "..", ".", "../x", "x/../y", "a..b", "/abs", "a/b", ".hidden", "-flag", "+x", "_x",
    "x" * 129, "has space", "tab\there", "new\nline", "semi;colon", "dollar$", "star*", "back\\slash",
    "é", "x\x00",
])
def test_unsafe_names(name: str) -> None:
    assert not is_safe_name(name)
    with pytest.raises(UnsafeNameError):
        check_name("version", name)


def test_check_name_error_names_the_kind_and_value_and_says_what_is_allowed() -> None:
    with pytest.raises(UnsafeNameError) as info:
        check_name("version", "../etc")
    message = str(info.value)
    assert message.startswith("invalid version name '../etc':")
    assert "1-128 letters, digits" in message
    assert isinstance(info.value, ConfigError)
    assert info.value.exit_code == 2


@pytest.mark.parametrize("value", [None, 3, b"web", ["web"]])
def test_check_name_refuses_non_strings(value: object) -> None:
    with pytest.raises(UnsafeNameError) as info:
        check_name("node", value)
    assert "invalid node name" in str(info.value)
