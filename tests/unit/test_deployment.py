"""One deployment, one configuration (shared.deployment): the first process records what every
process must agree on; a later one that disagrees is refused with the setting, both values and
the fix; the store is known by an identity written into it, not by its path."""

from __future__ import annotations

import os
import threading

import pytest

from imagesvc.shared import deployment
from imagesvc.shared.config import ConfigError, Settings, effective, sources
from imagesvc.shared.store.local import IDENTITY_FILE, LocalStore

RABBIT = "amqp://svc:s3cret@rabbit.example:5672//"


def settings(store, **more) -> Settings:
    values = {"image_store": str(store) if store != "none" else "none", "broker_url": RABBIT,
              "image_server_url": "http://images.example:8080", "topology_prefix": "prod.", **more}
    return Settings(**values)


def test_the_first_process_records_and_the_next_agrees(engine, tmp_path):
    store = tmp_path / "store"
    mine = deployment.check(engine, settings(store), process="importer", uses_store=True)
    identity = LocalStore(str(store)).identity()
    assert identity and (store / IDENTITY_FILE).read_text().strip() == identity
    record = deployment.recorded(engine)
    assert {name: r.value for name, r in record.items()} == {
        "image_store": identity, "image_server_url": "http://images.example:8080", "topology_prefix": "prod.",
        "queue_max_length": "100000", "dead_letter_max_length": "10000"}
    assert record["image_store"].recorded_by.startswith("importer@")
    assert {fact.name for fact in mine} == set(record)
    deployment.check(engine, settings(store), process="deleter", uses_store=True)  # agrees: no error
    assert {name: r.recorded_by for name, r in deployment.recorded(engine).items()} == \
        {name: r.recorded_by for name, r in record.items()}  # nothing re-recorded


def test_the_same_store_at_another_path_agrees(engine, tmp_path):
    store = tmp_path / "store"
    deployment.check(engine, settings(store), process="importer", uses_store=True)
    elsewhere = tmp_path / "mounted-elsewhere"
    os.symlink(store, elsewhere)  # another machine mounts it at another path
    deployment.check(engine, settings(elsewhere), process="updater", uses_store=True)


def test_an_empty_directory_instead_of_the_store_is_refused_naming_both_and_the_fix(engine, tmp_path):
    store = tmp_path / "store"
    deployment.check(engine, settings(store), process="importer", uses_store=True)
    identity = LocalStore(str(store)).identity()
    empty = tmp_path / "not-mounted"
    with pytest.raises(deployment.DeploymentMismatch) as refused:
        deployment.check(engine, settings(empty), process="updater", uses_store=True)
    said = str(refused.value)
    assert "IMAGESVC_IMAGE_STORE" in said and str(empty) in said and identity in said, said
    assert "no store identity" in said and "importer@" in said and "imagesvc config record --yes" in said, said
    assert not (empty / IDENTITY_FILE).exists()  # a refused process marks nothing


def test_another_store_and_no_store_are_refused(engine, tmp_path):
    deployment.check(engine, settings(tmp_path / "store"), process="importer", uses_store=True)
    other = LocalStore(str(tmp_path / "other"))
    other.identity(create=True)
    with pytest.raises(deployment.DeploymentMismatch, match=f"store {other.identity()}"):
        deployment.check(engine, settings(tmp_path / "other"), process="deleter", uses_store=True)
    with pytest.raises(deployment.DeploymentMismatch, match=r"this gateway has none \(IMAGESVC_IMAGE_STORE=none\)"):
        deployment.check(engine, settings("none"), process="gateway", uses_store=True)


def test_a_deployment_without_a_store_refuses_a_process_with_one(engine, tmp_path):
    deployment.check(engine, settings("none"), process="gateway", uses_store=True)
    with pytest.raises(deployment.DeploymentMismatch, match="the deployment's is none"):
        deployment.check(engine, settings(tmp_path / "store"), process="importer", uses_store=True)


def test_broker_settings_must_agree_but_not_on_the_embedded_broker(engine, tmp_path):
    deployment.check(engine, settings("none"), process="gateway", uses_store=True)
    with pytest.raises(deployment.DeploymentMismatch) as refused:
        deployment.check(engine, settings("none", topology_prefix="staging.", queue_max_length=5),
                         process="projector", uses_store=False)
    said = str(refused.value)
    assert "IMAGESVC_TOPOLOGY_PREFIX: this projector has 'staging.', but the deployment's is 'prod.'" in said, said
    assert "IMAGESVC_QUEUE_MAX_LENGTH" in said and "IMAGESVC_IMAGE_STORE" not in said, said
    # The projector does not use the store: it is not asked about it.
    deployment.check(engine, settings(tmp_path / "anything"), process="projector", uses_store=False)
    # serve's in-memory broker has nobody to agree with on queues.
    deployment.check(engine, settings("none", broker_url="memory://", topology_prefix="x."), process="serve",
                     uses_store=True)


def test_serve_with_its_derived_image_server_url_is_not_held_to_it(engine, tmp_path):
    embedded = dict(broker_url="memory://")
    deployment.check(engine, settings(tmp_path / "s", image_server_url="http://127.0.0.1:8000", **embedded),
                     process="serve", uses_store=True, server_url_configured=False)
    deployment.check(engine, settings(tmp_path / "s", image_server_url="http://127.0.0.1:9000", **embedded),
                     process="serve", uses_store=True, server_url_configured=False)
    assert "image_server_url" not in deployment.recorded(engine)


def test_concurrent_first_processes_with_different_stores_one_wins(engine, tmp_path):
    outcomes: dict[str, str] = {}
    barrier = threading.Barrier(2)

    def start(name: str) -> None:
        barrier.wait()
        try:
            deployment.check(engine, settings(tmp_path / name), process=name, uses_store=True)
            outcomes[name] = "agreed"
        except deployment.DeploymentMismatch:
            outcomes[name] = "refused"

    threads = [threading.Thread(target=start, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes.values()) == ["agreed", "refused"], outcomes
    winner = next(name for name, outcome in outcomes.items() if outcome == "agreed")
    assert deployment.recorded(engine)["image_store"].value == LocalStore(str(tmp_path / winner)).identity()


def test_record_replaces_the_record_on_purpose(engine, tmp_path):
    deployment.check(engine, settings(tmp_path / "old"), process="importer", uses_store=True)
    moved = settings(tmp_path / "new", topology_prefix="v2.")
    with pytest.raises(deployment.DeploymentMismatch):
        deployment.check(engine, moved, process="importer", uses_store=True)
    deployment.record(engine, moved, process="config-record")
    deployment.check(engine, moved, process="importer", uses_store=True)
    assert deployment.recorded(engine)["topology_prefix"].value == "v2."


def test_an_unreadable_identity_is_a_configuration_error(engine, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    (store / IDENTITY_FILE).write_text("not a uuid")
    with pytest.raises(ConfigError, match="not an imagesvc store identity"):
        deployment.check(engine, settings(store), process="importer", uses_store=True)


def test_the_identity_is_part_of_the_store_not_garbage(tmp_path):
    store = LocalStore(str(tmp_path / "store"))
    first = store.identity(create=True)
    assert store.identity(create=True) == first == store.identity()
    assert [entry.path for entry in store.survey()] == []
    assert os.listdir(tmp_path / "store" / ".partial") == []  # the temporary it was written through is gone


def test_effective_settings_mask_passwords_and_sources_say_where_each_came_from():
    environ = {"IMAGESVC_BROKER_URL": RABBIT, "IMAGESVC_DATABASE_URL": "postgresql+psycopg://u:pw@db/imagesvc",
               "IMAGESVC_PREFETCH": "3"}
    shown = effective(Settings.from_env(environ))
    assert shown["IMAGESVC_BROKER_URL"] == "amqp://svc:***@rabbit.example:5672//"
    assert shown["IMAGESVC_DATABASE_URL"] == "postgresql+psycopg://u:***@db/imagesvc"
    assert "s3cret" not in repr(shown) and "pw@" not in repr(shown)
    assert shown["IMAGESVC_PREFETCH"] == 3
    where = sources(Settings.from_env({"IMAGESVC_PREFETCH": "3"}, embedded=True), {"IMAGESVC_PREFETCH": "3"},
                    embedded=True)
    assert where["IMAGESVC_PREFETCH"] == "environment"
    assert where["IMAGESVC_BROKER_URL"] == where["IMAGESVC_IMAGE_STORE"] == "serve's default"
    assert where["IMAGESVC_HEARTBEAT"] == "default"
