"""The settings of the commands that work on an existing database (admin, store check, projector
rebuild): the configured one, else the embedded mode's SQLite file, which they never create."""

from __future__ import annotations

import os
from pathlib import Path

from imagesvc.shared.config import ConfigError, Settings


def for_existing_database() -> Settings:
    """``Settings`` with the embedded mode's defaults; raises ConfigError when the database is
    the embedded mode's SQLite file and there is none (only ``serve`` and ``db upgrade`` make
    one: run from anywhere else, a command would otherwise leave an empty ``./var`` behind)."""
    settings = Settings.from_env(os.environ, embedded=True)
    path = missing_sqlite_file(settings)
    if path is not None:
        configured = "IMAGESVC_DATABASE_URL" in os.environ
        raise ConfigError(
            f"no database at {path} ({'IMAGESVC_DATABASE_URL' if configured else 'the embedded default: IMAGESVC_DATA_DIR'}"
            f"={os.environ.get('IMAGESVC_DATABASE_URL') if configured else settings.data_dir}); run this where "
            "`imagesvc serve` keeps its data (the directory holding ./var), set IMAGESVC_DATA_DIR or "
            "IMAGESVC_DATABASE_URL to it, or create it with `imagesvc db upgrade`")
    return settings


def missing_sqlite_file(settings: Settings) -> Path | None:
    """The SQLite file ``settings`` name when it does not exist (else None: it exists, or the
    database is not a SQLite file)."""
    from sqlalchemy.engine import make_url

    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        path = Path(url.database)
        return None if path.exists() else path
    return None
