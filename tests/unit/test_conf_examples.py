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


def test_example_etch_wave_plan_is_valid_and_resolves_in_etch_order() -> None:
    from zkdeploy.policy.waves import resolve

    catalog = load_catalog(CONF / "waves-etch.yaml")
    web = catalog.services["web"]
    assert [(w.name, w.min_age) for w in web.waves] == [
        ("dev", 0.0), ("qa", 3600.0), ("staging", 7200.0), ("prod-half", 10800.0), ("rest", 14400.0)]
    assert web.on_failure == "mark_bad"
    labels = {"d1": {"env": "dev"}, "i1": {"env": "int"}, "q1": {"env": "qa"}, "s1": {"env": "staging"},
              **{f"p{i}": {"env": "prod"} for i in range(8)}}
    plan = resolve([w.model_dump(mode="json") for w in web.waves], labels)
    assert [sorted(w["nodes"]) for w in plan[:3]] == [["d1", "i1"], ["q1"], ["s1"]]
    half, rest = plan[3]["nodes"], plan[4]["nodes"]
    assert 0 < len(half) < 8 and sorted(half + rest) == [f"p{i}" for i in range(8)]


def test_every_yaml_file_in_conf_is_a_valid_catalog_or_agent_file() -> None:
    for path in sorted(CONF.glob("*.yaml")):
        if path.name == "agent.yaml":
            load_agent_config(path)
        else:
            load_catalog(path)
