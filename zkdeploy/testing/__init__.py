"""Helpers that start real parts (a ZooKeeper server) for tests, the demo and benchmarks."""
