"""Which pieces a downloader asks for first (docs/swarm.md, "Striping"), without libtorrent.

Each downloader ranks itself among the peers that are not known seeds and gives its own slice of
the pieces the highest priority.  Downloaders then pull different pieces from the seeders and
trade them with each other, instead of all asking a seeder for the same "rarest" pieces (which
made the origin send up to 2.8 copies).  Every piece is still wanted; only the order changes, so
a wrong guess costs speed, never data.
"""

from __future__ import annotations

from collections.abc import Set

from zkdeploy.transfer.swarm_config import Endpoint

OWN_SLICE, OTHERS, EVEN = 7, 1, 4  # libtorrent piece priorities (1 lowest wanted, 7 highest)


def stripe_priorities(me: Endpoint, peers: Set[Endpoint], seeds: Set[Endpoint],
                      num_pieces: int) -> tuple[list[int], range | None]:
    """The piece priorities for the downloader ``me``, and its own slice (None when it is the only
    downloader: every piece alike)."""
    everyone = sorted((set(peers) - set(seeds)) | {me})
    if len(everyone) < 2:
        return [EVEN] * num_pieces, None
    rank = everyone.index(me)
    mine = range(rank * num_pieces // len(everyone), (rank + 1) * num_pieces // len(everyone))
    return [OWN_SLICE if i in mine else OTHERS for i in range(num_pieces)], mine
