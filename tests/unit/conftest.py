"""Unit-level fixtures: nothing outside this process (SQLite files, kombu's memory:// transport).

A migrated SQLite database is built once per session from the Alembic migrations and copied for
each test that needs one.
"""

from __future__ import annotations

import shutil
import uuid

import pytest

from imagesvc.shared.db import accounts
from imagesvc.shared.db.engine import make_engine, write_transaction
from imagesvc.shared.db.migrate import upgrade
from imagesvc.shared.store.local import LocalStore
from tests.support.origin import Origin


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory):
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def migrated_url(sqlite_template, tmp_path) -> str:
    """The URL of a fresh copy of the migrated template (what ``imagesvc db upgrade`` makes)."""
    path = tmp_path / f"{uuid.uuid4().hex}.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def engine(migrated_url):
    db = make_engine(migrated_url, pool_size=4)
    yield db
    db.dispose()


@pytest.fixture
def origin():
    """A loopback origin of the test's own (the session's is shared): unit tests count its hits."""
    served = Origin()
    yield served
    served.close()


@pytest.fixture
def owner(engine):
    """The SuperAdmin ``admin`` in ``engine``'s database (the owner of the images tests record)."""
    with write_transaction(engine) as conn:
        accounts.create_user(conn, "admin", api_key=None, is_superadmin=True)


@pytest.fixture
def image_store(tmp_path) -> LocalStore:
    return LocalStore(str(tmp_path / "store"))
