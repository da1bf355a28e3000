"""Pure decision logic: dependency order, quorum arithmetic, version choice.

Nothing here does I/O; everything is a function of its arguments.
"""
