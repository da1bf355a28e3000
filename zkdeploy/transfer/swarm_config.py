"""What a swarm session is told and tells, without libtorrent: its configuration, the settings
pack it opens with, a transfer's status, and the errors a fetch from the swarm raises.

The agent's transport reads these before (and whether or not) it starts a session, so importing
them must not load libtorrent (about 10 MB); ``zkdeploy.transfer.swarm`` is the session itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from zkdeploy.errors import IntegrityError, PayloadError

Endpoint = tuple[str, int]
PeersProvider = Callable[[], Iterable[Endpoint]]


class SwarmStalled(PayloadError):
    """No payload byte arrived for ``stall_timeout`` seconds; fall back to the HTTP origin."""


class DownloadCancelled(PayloadError):
    """The caller's cancel event was set while a download was running."""


class SwarmLost(SwarmStalled):
    """The swarm worker process ended (or was never running) during a transfer; fall back to the origin."""


#: the errors a swarm worker's reply names by kind, most specific first (its parent raises the same class)
ERROR_KINDS: dict[str, type[PayloadError]] = {
    "SwarmLost": SwarmLost, "SwarmStalled": SwarmStalled, "DownloadCancelled": DownloadCancelled,
    "IntegrityError": IntegrityError, "PayloadError": PayloadError,
}


def error_kind(exc: PayloadError) -> str:
    return next(kind for kind, cls in ERROR_KINDS.items() if isinstance(exc, cls))


@dataclass(frozen=True)
class SwarmConfig:
    """How one agent's session listens and behaves.

    ``listen_port`` 0 lets the OS choose (read ``listen_endpoint`` after
    ``start``).  Rate caps are bytes/s, 0 = unlimited; they apply to every
    peer, RFC1918 and loopback included.  ``free_space`` returns the free
    bytes of a directory (a seam for tests); ``extra_settings`` overrides any
    libtorrent setting (for the lab).
    """

    listen_ip: str = "127.0.0.1"
    listen_port: int = 6881
    upload_rate_limit: int = 0
    download_rate_limit: int = 0
    allow_multiple_connections_per_ip: bool = False
    disk_margin_bytes: int = 64 << 20  # 64 MiB (as zkdeploy.transfer.metainfo.MiB)
    free_space: Callable[[str], int] | None = None
    peer_refresh_interval: float = 2.0
    resume_save_interval: float = 10.0
    start_timeout: float = 10.0
    seed_max_uploads: int = -1
    stripe_pieces: bool = True
    extra_settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TransferStatus:
    """A snapshot of one torrent in the session (rates in bytes/s)."""

    info_hash: str
    name: str
    state: str
    progress: float
    download_rate: int
    upload_rate: int
    num_peers: int
    is_seeding: bool
    total_download: int
    total_upload: int
    hash_failures: int


def closed_swarm_settings(config: SwarmConfig) -> dict[str, Any]:
    """The libtorrent settings pack for a closed, TCP-only swarm (docs/swarm.md)."""
    import libtorrent as lt  # only when a session starts: this module is read without libtorrent

    settings: dict[str, Any] = {
        "listen_interfaces": format_endpoint(config.listen_ip, config.listen_port),
        "max_retry_port_bind": 0,
        "listen_system_port_fallback": False,
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "dht_bootstrap_nodes": "",
        "enable_ip_notifier": False,
        "enable_incoming_utp": False,
        "enable_outgoing_utp": False,
        "allow_multiple_connections_per_ip": bool(config.allow_multiple_connections_per_ip),
        "min_reconnect_time": 1,
        "max_failcount": 100,
        "unchoke_slots_limit": -1,
        "upload_rate_limit": int(config.upload_rate_limit),
        "download_rate_limit": int(config.download_rate_limit),
        "alert_mask": (lt.alert_category.error | lt.alert_category.status
                       | lt.alert_category.storage),
        # Lab-tuned (docs/swarm.md): pick by priority from the first piece
        # (no random start) and keep request queues short, so a downloader
        # asks the origin for pieces of its own slice rather than piling up
        # requests for pieces another downloader is already fetching there.
        "initial_picker_threshold": 0,
        "request_queue_time": 1,
        "user_agent": "zkdeploy",
    }
    settings.update(config.extra_settings)
    return settings


def format_endpoint(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def config_to_json(config: SwarmConfig) -> dict[str, Any]:
    """The plain fields of a SwarmConfig, for a swarm worker's command line (``free_space`` is a
    test seam and stays in the agent)."""
    out = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name != "free_space"}
    out["extra_settings"] = dict(config.extra_settings)
    return out
