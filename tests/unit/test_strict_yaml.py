"""A key given twice in a configuration file is an error naming the file and the line (issue 14, defect 5)."""

from __future__ import annotations

from pathlib import Path

import pytest

from zkdeploy.config.loader import load_catalog
from zkdeploy.errors import ConfigError


def test_a_duplicate_key_is_refused_with_its_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "services.yaml"
    path.write_text("services:\n  db:\n    quorum: 2\n    start: run db\n    quorum: 1\n")
    with pytest.raises(ConfigError) as info:
        load_catalog(path)
    assert str(info.value) == (f"{path}: malformed YAML (line 5, column 5): "
                               "the key 'quorum' is given twice (first on line 3)")


def test_the_same_key_in_two_mappings_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "services.yaml"
    path.write_text("services:\n  db:\n    quorum: 2\n    start: run db\n  web:\n    quorum: 2\n    start: run web\n")
    assert sorted(load_catalog(path).services) == ["db", "web"]
