"""The ``imagesvc`` command's administration paths (scriptable: the key alone on the last line)."""

from __future__ import annotations

from sqlalchemy import create_engine, select

from imagesvc.cli import main
from shared.db.migrate import upgrade
from shared.db.models import User
from shared.keys import key_digest


def test_create_superadmin_prints_the_key_last_and_stores_only_its_digest(tmp_path, monkeypatch, capsys):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("IMAGESVC_DATABASE_URL", url)
    assert main(["db", "upgrade"]) == 0
    capsys.readouterr()

    assert main(["admin", "create-superadmin", "ops"]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    assert len(key) >= 40
    engine = create_engine(url)
    with engine.connect() as conn:
        row = conn.execute(select(User.__table__).where(User.__table__.c.username == "ops")).one()
    assert row.is_superadmin and row.api_key_digest == key_digest(key)
    assert key not in (tmp_path / "cli.db").read_bytes().decode("latin-1")

    assert main(["admin", "create-superadmin", "ops"]) == 1
    assert "exists" in capsys.readouterr().err
    assert main(["admin", "create-superadmin", "ops", "--new-key"]) == 0
    new_key = capsys.readouterr().out.strip().splitlines()[-1]
    assert new_key != key
    with engine.connect() as conn:
        digest = conn.execute(select(User.__table__.c.api_key_digest).where(User.__table__.c.username == "ops"))
        assert digest.scalar_one() == key_digest(new_key)
    engine.dispose()


def test_an_unmigrated_database_gets_a_sentence_not_a_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IMAGESVC_DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    assert main(["admin", "create-superadmin", "ops"]) == 1
    assert "imagesvc db upgrade" in capsys.readouterr().err


def test_a_bad_setting_names_its_variable(monkeypatch, capsys):
    monkeypatch.setenv("IMAGESVC_PREFETCH", "many")
    assert main(["db", "upgrade"]) == 2
    assert "IMAGESVC_PREFETCH" in capsys.readouterr().err


def test_upgrade_is_idempotent(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'twice.db'}"
    upgrade(url)
    monkeypatch.setenv("IMAGESVC_DATABASE_URL", url)
    assert main(["db", "upgrade"]) == 0
