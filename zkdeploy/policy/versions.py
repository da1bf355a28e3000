"""Which version a node should run when it comes back."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping


def most_popular(versions: Iterable[str | None], staged_at: Mapping[str, float] | None = None) -> str | None:
    """The version run by the most nodes; ties go to the most recently staged.

    ``staged_at`` maps a version to the time it was staged; versions without a
    time rank below those with one, and remaining ties fall to the larger
    version string, so the choice is the same on every node.
    """
    counts = Counter(v for v in versions if v)
    if not counts:
        return None
    staged_at = staged_at or {}
    return max(counts, key=lambda v: (counts[v], staged_at.get(v, float("-inf")), v))
