"""Temporary re-export while callers move to zkdeploy.transfer.transport."""
from zkdeploy.transfer.transport import TORRENT_BLOB, Transport, peer_order  # noqa: F401
