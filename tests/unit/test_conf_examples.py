"""The example files in conf/ are valid: a newcomer copies them first."""

from pathlib import Path

from zkdeploy.config import load_agent_config, load_catalog

CONF = Path(__file__).resolve().parents[2] / "conf"


def test_example_catalog_is_valid() -> None:
    catalog = load_catalog(CONF / "services.yaml")
    assert catalog.services["web"].depends_on == ("db",)
    assert catalog.services["web"].health_checks[1].kind == "command"


def test_example_agent_file_is_valid() -> None:
    config = load_agent_config(CONF / "agent.yaml")
    assert config.services == ("db", "web")
    assert config.labels.model_dump()["team"] == "storefront"
