"""The lock an ``imagesvc serve`` holds on its database for as long as it lives.

``serve``'s start-up recovery takes every lease and accepted command it finds for abandoned,
which holds only while no other ``serve`` works on the same database; and other commands use the
lock to tell that a ``serve`` is running (its broker, ``memory://``, lives inside it). The kernel
lets the lock go when the process dies, ``kill -9`` included. The lock is a file beside an SQLite
database, else in the data directory.
"""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import IO

from imagesvc.shared.config import Settings


def lock_path(settings: Settings) -> Path:
    from sqlalchemy.engine import make_url

    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        return Path(f"{Path(url.database).resolve()}-serve.lock")
    return Path(settings.data_dir).resolve() / "serve.lock"


def take(settings: Settings) -> IO[str] | None:
    """Lock the database for this process: the open lock file (keep it open), or None when
    another process holds the lock."""
    path = lock_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def held(settings: Settings) -> bool:
    """Whether a running ``imagesvc serve`` holds the lock of this database (creates nothing)."""
    path = lock_path(settings)
    try:
        handle = open(path)
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False
