"""Configuration files: the fleet catalog of services and the agent file."""

from zkdeploy.config.loader import load_agent_config, load_catalog, parse_catalog
from zkdeploy.config.schema import AgentConfig, Catalog, HealthCheck, ServiceSpec

__all__ = [
    "AgentConfig",
    "Catalog",
    "HealthCheck",
    "ServiceSpec",
    "load_agent_config",
    "load_catalog",
    "parse_catalog",
]
