"""``imagesvc dlq``'s arguments and its refusal in the embedded mode (the broker work is in
tests/integration/test_dlq.py)."""

from __future__ import annotations

import pytest

from imagesvc import cli
from imagesvc.dlq import resolve
from shared.config import Settings


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
