"""The operator CLI (``zkdeploy``).  It writes intent to ZooKeeper and prints state; agents act."""
