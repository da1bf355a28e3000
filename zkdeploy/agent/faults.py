"""Moved: the crash-injection hook is zkdeploy.crash (one hook for the agent and the journal)."""

from zkdeploy.crash import crash_point  # noqa: F401  (kept for zkdeploy.agent.restart's import)
