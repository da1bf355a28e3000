"""The agent daemon: one per node, a decision cycle over a ZooKeeper snapshot."""
