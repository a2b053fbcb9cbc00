"""``imagesvc dlq``'s arguments and its refusal in the embedded mode (the broker work is in
tests/integration/test_dlq.py)."""

from __future__ import annotations

import os

import pytest

from imagesvc import cli
from imagesvc.dlq import resolve
from imagesvc.shared.config import Settings


@pytest.mark.parametrize("verb", [["list"], ["list", "importer"], ["replay", "importer", "--all"],
                                  ["purge", "importer", "--yes"]])
def test_the_embedded_modes_queues_are_out_of_reach(monkeypatch, capsys, verb):
    monkeypatch.setenv("IMAGESVC_BROKER_URL", "memory://")
    assert cli.main(["dlq", *verb]) == 2
    assert "live inside the `imagesvc serve` process" in capsys.readouterr().err


@pytest.mark.parametrize("given, queue", [
    ("importer", "p.importer.commands.dlq"),
    ("projector", "p.projector.events.dlq"),
    ("deleter.commands", "p.deleter.commands.dlq"),
    ("p.updater.commands.dlq", "p.updater.commands.dlq"),
    ("node.cn1.commands", "p.node.cn1.commands.dlq"),
])
def test_a_queue_is_named_by_its_service_its_work_queue_or_itself(given, queue):
    assert resolve(Settings(topology_prefix="p."), given) == queue


def test_a_replay_names_one_message_or_all(capsys):
    with pytest.raises(SystemExit):
        cli.main(["dlq", "replay", "importer"])
    assert "--id" in capsys.readouterr().err


def test_dlq_beside_a_running_serve_says_the_broker_is_embedded(tmp_path, monkeypatch, capsys):
    """No broker configured and a `serve` holding this directory's database: the default RabbitMQ
    address is not that system's broker, so the command says so instead of asking RabbitMQ."""
    from imagesvc import serve_lock
    from imagesvc.shared.config import Settings

    monkeypatch.delenv("IMAGESVC_BROKER_URL", raising=False)
    monkeypatch.delenv("IMAGESVC_DATABASE_URL", raising=False)
    monkeypatch.setenv("IMAGESVC_DATA_DIR", str(tmp_path / "var"))
    held = serve_lock.take(Settings.from_env(os.environ, embedded=True))  # as a running serve holds it
    assert held is not None
    try:
        assert cli.main(["dlq", "list"]) == 2
        assert "an imagesvc serve runs on this directory's database" in capsys.readouterr().err
    finally:
        held.close()
    assert not serve_lock.held(Settings.from_env(os.environ, embedded=True))
