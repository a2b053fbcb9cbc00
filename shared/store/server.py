"""The image server as the consumers see it: its store, its own URL and the node that hosts it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from imagesvc.shared.store.base import ImageStore, StoreUnavailable

if TYPE_CHECKING:
    from sqlalchemy import Connection

#: Why the image server cannot take a command (reference §5: 428 first, then 423).
STORE_DOWN, NODE_DOWN = "store", "node"


def _origin(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(url)
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
    except ValueError:
        return None
    if not parts.hostname or port is None:
        return None
    return parts.scheme.lower(), parts.hostname.lower().rstrip("."), port


@dataclass(frozen=True)
class ImageServer:
    store: ImageStore
    #: The URL compute nodes and other instances use to reach it ("" when not published).
    url: str = ""
    #: Hostname of the compute node hosting it ("" when not checked).
    node: str = ""

    def unavailable(self, conn: Connection) -> str | None:
        """None when the image server can take a command now; else ``STORE_DOWN`` (its store
        fails its health check) or ``NODE_DOWN`` (its node is unknown or not online)."""
        try:
            self.store.check()
        except StoreUnavailable:
            return STORE_DOWN
        if self.node:
            from imagesvc.shared.db import nodes

            found = nodes.get(conn, self.node)
            if found is None or not found.operational:
                return NODE_DOWN
        return None

    def serves(self, url: str) -> bool:
        """Whether ``url`` points at this image server: the same scheme, host and port (an exact
        origin comparison, not the original's string prefix: deviations #8)."""
        mine = _origin(self.url) if self.url else None
        return mine is not None and _origin(url) == mine
