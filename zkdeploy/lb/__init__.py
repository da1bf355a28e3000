"""Load balancers zkdeploy drains and reads: HAProxy's runtime API (runtime.py)."""
