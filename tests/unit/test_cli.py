"""The ``imagesvc`` command's administration paths (scriptable: the key alone on the last line)."""

from __future__ import annotations

import io
import os

from sqlalchemy import create_engine, select

import pytest

from imagesvc.cli import main
from imagesvc.shared.config import Settings
from imagesvc.shared.db.migrate import upgrade
from imagesvc.shared.logging import configure_logging
from imagesvc.shared.db.models import User
from imagesvc.shared.keys import key_digest


@pytest.fixture(autouse=True)
def logging_to_the_real_stderr():
    """Commands configure logging onto the sys.stderr of the moment, which capsys replaces and
    then closes: put it back for the tests that follow."""
    yield
    configure_logging("tests", fmt="console")


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
    (tmp_path / "empty.db").touch()
    monkeypatch.setenv("IMAGESVC_DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    assert main(["admin", "create-superadmin", "ops"]) == 1
    assert "imagesvc db upgrade" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["admin", "user", "list"], ["admin", "create-superadmin", "ops"],
                                     ["admin", "vm", "list"], ["store", "check"], ["projector", "rebuild"]])
def test_no_command_but_serve_and_db_upgrade_creates_a_database(command, tmp_path, monkeypatch, capsys):
    """Run from a directory without ./var (the embedded default), a command says where it looked
    and how to point it at the database, and leaves nothing behind."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("IMAGESVC_DATABASE_URL", raising=False)
    monkeypatch.delenv("IMAGESVC_DATA_DIR", raising=False)
    assert main(command) in (1, 2)
    said = capsys.readouterr().err
    assert f"no database at {tmp_path / 'var' / 'imagesvc.db'}" in said and "IMAGESVC_DATA_DIR" in said, said
    assert list(tmp_path.iterdir()) == []


def test_a_bad_setting_names_its_variable(monkeypatch, capsys):
    monkeypatch.setenv("IMAGESVC_PREFETCH", "many")
    assert main(["db", "upgrade"]) == 2
    assert "IMAGESVC_PREFETCH" in capsys.readouterr().err


def test_upgrade_is_idempotent(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'twice.db'}"
    upgrade(url)
    monkeypatch.setenv("IMAGESVC_DATABASE_URL", url)
    assert main(["db", "upgrade"]) == 0


def test_admin_commands_manage_users_datacenters_and_roles_in_the_embedded_database(tmp_path, monkeypatch, capsys):
    import json

    monkeypatch.delenv("IMAGESVC_DATABASE_URL", raising=False)
    monkeypatch.setenv("IMAGESVC_DATA_DIR", str(tmp_path / "var"))  # where `serve` keeps its database
    assert main(["db", "upgrade"]) == 0
    assert (tmp_path / "var" / "imagesvc.db").exists()
    capsys.readouterr()

    assert main(["admin", "user", "create", "alice"]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["admin", "dc", "create", "dc1", "--owner", "alice", "--image-limit", "5"]) == 0
    assert main(["admin", "group", "create", "ops", "--permission", "admin", "--permission", "image_admin"]) == 0
    capsys.readouterr()
    # Every command that changes something says what it did.
    assert main(["admin", "role", "add-user", "ops", "alice"]) == 0
    assert main(["admin", "role", "attach", "ops", "dc1"]) == 0
    assert main(["admin", "role", "detach", "ops", "dc1"]) == 0
    assert main(["admin", "role", "remove-user", "ops", "alice"]) == 0
    assert main(["admin", "role", "add-user", "ops", "alice"]) == 0
    assert main(["admin", "role", "attach", "ops", "dc1"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "added 'alice' to role 'ops'", "attached role 'ops' to datacenter 'dc1'",
        "detached role 'ops' from datacenter 'dc1'", "removed 'alice' from role 'ops'",
        "added 'alice' to role 'ops'", "attached role 'ops' to datacenter 'dc1'"]

    assert main(["admin", "role", "list"]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == [
        {"name": "ops", "permissions": ["admin", "image_admin"], "users": ["alice"], "dcs": ["dc1"]}]
    assert main(["admin", "dc", "list"]) == 0
    dcs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(d["name"], d["owner"], d["image_limit"]) for d in dcs] == [("main", None, None), ("dc1", "alice", 5)]

    engine = create_engine(f"sqlite:///{tmp_path / 'var' / 'imagesvc.db'}")
    users = User.__table__

    def alice():
        with engine.connect() as conn:
            return conn.execute(select(users).where(users.c.username == "alice")).one()

    assert alice().api_key_digest == key_digest(key) and not alice().is_superadmin
    capsys.readouterr()
    assert main(["admin", "user", "set", "alice", "--api-access", "no"]) == 0
    assert alice().api_access is False
    assert capsys.readouterr().out.strip() == "user 'alice': api_access=no"
    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough secret\n"))
    assert main(["admin", "user", "password", "alice"]) == 0
    assert capsys.readouterr().out.strip() == "set the password of 'alice'"
    assert main(["admin", "user", "key", "alice", "--revoke"]) == 0
    assert alice().api_key_digest is None
    engine.dispose()

    # Mistakes are one line on stderr and exit status 1, and change nothing.
    capsys.readouterr()
    assert main(["admin", "dc", "create", "dc2", "--owner", "nobody"]) == 1
    assert main(["admin", "role", "attach", "ops", "nowhere"]) == 1
    assert main(["admin", "user", "create", "alice"]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors == ["imagesvc: no user 'nobody'", "imagesvc: no datacenter 'nowhere'", "imagesvc: alice exists already"]


def test_admin_commands_refuse_names_that_could_not_be_used_and_keep_a_superadmin(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IMAGESVC_DATABASE_URL", f"sqlite:///{tmp_path / 'names.db'}")
    assert main(["db", "upgrade"]) == 0
    assert main(["admin", "create-superadmin", "root"]) == 0
    capsys.readouterr()
    for command in (["dc", "create", "x" * 17], ["dc", "create", "a/b"], ["dc", "create", "dc1", "--image-limit", "-1"],
                    ["user", "create", "u" * 151], ["user", "create", "has space"], ["role", "create", "r\\x00"],
                    ["user", "set", "root", "--superadmin", "no"]):
        assert main(["admin", *command]) == 1, command
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 7 and all(line.startswith("imagesvc: ") for line in errors)
    assert errors[-1] == "imagesvc: that would leave no SuperAdmin"
    assert main(["admin", "dc", "list"]) == 0
    assert [line for line in capsys.readouterr().out.splitlines() if '"name"' in line] == [
        '{"access": 3, "image_limit": null, "is_default": true, "name": "main", "owner": null}']


def _node_lines(capsys) -> list[dict]:
    import json

    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_admin_node_set_list_remove(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IMAGESVC_DATABASE_URL", f"sqlite:///{tmp_path / 'nodes.db'}")
    assert main(["db", "upgrade"]) == 0
    capsys.readouterr()
    assert main(["admin", "node", "list"]) == 0
    assert _node_lines(capsys) == []

    uuid = "2f0c7c3e-1111-2222-3333-444455556666"
    assert main(["admin", "node", "set", "cn2", "--status", "online", "--uuid", uuid, "--address", "10.0.0.2"]) == 0
    assert main(["admin", "node", "set", "cn1", "--status", "maintenance"]) == 0
    out = capsys.readouterr().out
    assert "'cn2' is online (operational)" in out and "'cn1' is maintenance (not operational)" in out
    assert main(["admin", "node", "list"]) == 0
    listed = _node_lines(capsys)
    assert [{k: v for k, v in n.items() if k != "changed_at"} for n in listed] == [
        {"hostname": "cn1", "status": "maintenance", "uuid": None, "address": None},
        {"hostname": "cn2", "status": "online", "uuid": uuid, "address": "10.0.0.2"}]
    assert all(n["changed_at"].endswith("Z") for n in listed)

    assert main(["admin", "node", "set", "cn1", "--status", "online"]) == 0  # a later fact replaces the state
    assert main(["admin", "node", "remove", "cn2"]) == 0
    capsys.readouterr()
    assert main(["admin", "node", "list"]) == 0
    assert [(n["hostname"], n["status"]) for n in _node_lines(capsys)] == [("cn1", "online")]

    assert main(["admin", "node", "remove", "cn2"]) == 1
    assert capsys.readouterr().err.strip() == "imagesvc: no node 'cn2'"


def test_admin_node_set_stores_an_unknown_status_with_a_note(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IMAGESVC_DATABASE_URL", f"sqlite:///{tmp_path / 'nodes.db'}")
    assert main(["db", "upgrade"]) == 0
    assert main(["admin", "node", "set", "cn1", "--status", "rebooting"]) == 0
    assert "'rebooting' is not one of online, maintenance" in capsys.readouterr().err


@pytest.mark.parametrize("arguments", [
    ["set", "", "--status", "online"],
    ["set", "h" * 256, "--status", "online"],
    ["set", "cn 1", "--status", "online"],
    ["set", "cn1", "--status", ""],
    ["set", "cn1", "--status", "s" * 33],
    ["set", "cn1", "--status", "online", "--uuid", "12"],
    ["remove", ""],
    ["remove", "h" * 256],
])
def test_admin_node_refuses_what_could_never_be_stored_with_status_2(migrated_url, monkeypatch, capsys, arguments):
    monkeypatch.setenv("IMAGESVC_DATABASE_URL", migrated_url)
    assert main(["admin", "node", *arguments]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("imagesvc: ") and "\n" not in error
    assert main(["admin", "node", "list"]) == 0
    assert capsys.readouterr().out == ""


def test_admin_node_set_requires_a_status(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["admin", "node", "set", "cn1"])
    assert exited.value.code == 2 and "--status" in capsys.readouterr().err


def test_admin_node_set_does_not_overwrite_a_fact_from_a_clock_ahead_of_ours(tmp_path, monkeypatch, capsys):
    from datetime import timedelta

    from imagesvc.shared.db import nodes
    from imagesvc.shared.db.engine import make_engine, write_transaction
    from imagesvc.shared.db.models import utcnow

    url = f"sqlite:///{tmp_path / 'nodes.db'}"
    monkeypatch.setenv("IMAGESVC_DATABASE_URL", url)
    assert main(["db", "upgrade"]) == 0
    engine = make_engine(url, pool_size=1)
    with write_transaction(engine) as conn:
        nodes.put(conn, nodes.NodeRecord("cn1", "online", None, None, utcnow() + timedelta(hours=1)))
    engine.dispose()
    capsys.readouterr()
    assert main(["admin", "node", "set", "cn1", "--status", "maintenance"]) == 1
    assert main(["admin", "node", "remove", "cn1"]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all("newer than this machine's clock" in line for line in errors)
    assert main(["admin", "node", "list"]) == 0
    assert [n["status"] for n in _node_lines(capsys)] == ["online"]


@pytest.mark.parametrize("hostname", ["bad host", "x" * 250])
def test_node_agent_refuses_a_hostname_that_cannot_name_a_node_queue(hostname, capsys):
    assert main(["node-agent", "--node", hostname]) == 2
    assert "--node" in capsys.readouterr().err


def test_node_agent_refuses_to_start_without_an_image_store(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IMAGESVC_DATABASE_URL", f"sqlite:///{tmp_path}/x.db")
    monkeypatch.setenv("IMAGESVC_BROKER_URL", "memory://")
    monkeypatch.setenv("IMAGESVC_IMAGE_STORE", "none")
    assert main(["node-agent", "--node", "cn1"]) == 2
    assert "IMAGESVC_IMAGE_STORE" in capsys.readouterr().err


def test_version_and_help_show_what_an_operator_needs(capsys):
    """``--version`` names the installed version; ``--help`` lists every setting's variable with
    its default; a command's help shows its options' defaults."""
    from importlib.metadata import version as installed_version

    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out.strip() == f"imagesvc {installed_version('imagesvc')}"
    with pytest.raises(SystemExit):
        main(["--help"])
    helped = capsys.readouterr().out
    import dataclasses

    from imagesvc.shared.config import Settings
    for field in dataclasses.fields(Settings):
        assert f"IMAGESVC_{field.name.upper()}=" in helped, field.name
    assert "IMAGESVC_ANSWER_WINDOW=5.0" in helped and "IMAGESVC_RETRY_BACKOFF=0.5,2.0,5.0,10.0" in helped
    with pytest.raises(SystemExit):
        main(["gateway", "--help"])
    assert "(default: 8000)" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["serve", "gateway", "image-server"])
def test_a_taken_port_is_one_line_and_exit_code_1_before_anything_runs(command, tmp_path, monkeypatch, capsys):
    import socket

    monkeypatch.setenv("IMAGESVC_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("IMAGESVC_IMAGE_STORE", str(tmp_path / "store"))
    (tmp_path / "store").mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main([command, "--host", "127.0.0.1", "--port", str(port)]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip() == f"imagesvc {command}: cannot listen on 127.0.0.1:{port}: the port is in use"
    assert "running" not in captured.out
    assert not (tmp_path / "var").exists()  # serve started nothing: no database, no key


def test_projector_rebuild_refuses_beside_a_running_serve(tmp_path, monkeypatch, capsys):
    from imagesvc import serve_lock

    monkeypatch.delenv("IMAGESVC_DATABASE_URL", raising=False)
    monkeypatch.delenv("IMAGESVC_BROKER_URL", raising=False)
    monkeypatch.setenv("IMAGESVC_DATA_DIR", str(tmp_path / "var"))
    assert main(["db", "upgrade"]) == 0
    held = serve_lock.take(Settings.from_env(os.environ, embedded=True))  # as a running serve holds it
    try:
        assert main(["projector", "rebuild"]) == 1
        assert "an imagesvc serve runs on this database" in capsys.readouterr().err
    finally:
        held.close()
    assert main(["projector", "rebuild"]) == 0
    assert capsys.readouterr().out.startswith("read model rebuilt from ")
