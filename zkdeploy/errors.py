"""The one exception hierarchy of zkdeploy.

Every failure a user can see is a ``ZkdeployError`` of some kind.  Each kind
carries the process exit code the CLI uses for it, so that scripts can tell a
bad input (2) from an unreachable ZooKeeper (3) from a failed rollout (4).
"""

from __future__ import annotations


class ZkdeployError(Exception):
    """Base of every error zkdeploy raises on purpose."""

    exit_code = 1


class ConfigError(ZkdeployError):
    """A configuration file or command-line value is invalid.

    ``problems`` lists every problem found, each already naming its file and key.
    """

    exit_code = 2

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = list(problems or [])
        if self.problems:
            message = message + "\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message)


class DependencyCycleError(ConfigError):
    """The services' ``depends_on`` relations form a cycle."""

    def __init__(self, cycle: list[str]) -> None:
        self.cycle = list(cycle)
        super().__init__("dependency cycle: " + " -> ".join(cycle))


class UnsafeNameError(ConfigError):
    """A service, version or node name could escape its directory or ZooKeeper path."""


class CoordinationError(ZkdeployError):
    """ZooKeeper could not be reached or answered unexpectedly."""

    exit_code = 3


class SessionLostError(CoordinationError):
    """The ZooKeeper session is suspended or expired: no new step may start."""


class LockLostError(CoordinationError):
    """A lock or slot node this agent relied on no longer belongs to its session."""


class AccessDeniedError(CoordinationError):
    """ZooKeeper refused the call: this client's credentials lack the permission (ACL roles),
    or they were rejected.  Not a race and not an outage: retrying does not help."""

    exit_code = 2


class NotAdmittedError(AccessDeniedError):
    """Under ACL roles, this node may not yet say it is online (it has no availability parent of
    its own): it counts as down until an operator admits it with ``zkdeploy acl apply``."""


class ConflictError(CoordinationError):
    """A conditional write lost a race (the znode changed since it was read)."""


class NodeExistsError(ConflictError):
    """A create found the node already there."""


class NoNodeError(ConflictError):
    """A write or delete found no node (or no parent) at its path."""


class BadVersionError(ConflictError):
    """A conditional write or delete found another version than the one it was read at."""


class NotEmptyError(ConflictError):
    """A delete found children under the node."""


class Declined(ZkdeployError):
    """The operator did not confirm (answered no, or nothing): refused, nothing was changed."""

    exit_code = 2


class DeployRefusedError(ZkdeployError):
    """A deploy request was refused before anything was queued."""

    exit_code = 2


class RolloutError(ZkdeployError):
    """A rollout did not complete (timed out, failed, or was aborted)."""

    exit_code = 4


class StepTimeoutError(RolloutError):
    """A step (a command, a health check, a wait) ran past its timeout."""


class PayloadError(ZkdeployError):
    """A payload could not be fetched, or is corrupt, or would not unpack safely."""

    exit_code = 5


class IntegrityError(PayloadError):
    """A payload's SHA-256 does not match its release metadata."""


class SignatureError(IntegrityError):
    """A release record is unsigned, signed by no trusted key, does not match its signature,
    or would send the node back to an older release without a signed rollback."""


class ServiceError(ZkdeployError):
    """A service command or health check failed on this host."""

    exit_code = 6


class HealthCheckError(ServiceError):
    """A service did not pass its health checks."""


class JournalError(ZkdeployError):
    """The on-host journal is corrupt, from a newer schema, or refused a request."""

    exit_code = 7


class RolloutAborted(RolloutError):
    """A wait was abandoned because the deploy changed, the agent is stopping, or the killswitch is on."""


class DeployTransitionError(ZkdeployError):
    """A deploy entry was asked to move to a state its lifecycle does not allow from where it is
    (``resume`` of a done deploy, ``pause`` of a paused one).  Refused before anything is written.

    ``deploy``, ``current`` and ``requested`` name the entry and the two states; ``allowed`` lists
    the states the requester could have moved it to (empty for a terminal state).
    """

    exit_code = 2

    def __init__(self, message: str, *, deploy: str, current: str, requested: str,
                 allowed: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.deploy = deploy
        self.current = current
        self.requested = requested
        self.allowed = allowed
