"""zkdeploy: a ZooKeeper-coordinated rolling deployer."""

__version__ = "0.1.0"
