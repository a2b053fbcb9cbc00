"""shared.db.nodes on SQLite: the newest fact about a node wins, whatever order facts arrive in."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from imagesvc.shared.db import nodes
from imagesvc.shared.db.engine import read_transaction, write_transaction
from imagesvc.shared.db.nodes import NodeRecord

T0 = datetime(2026, 11, 27, 10, 0, 0, 123456, tzinfo=timezone.utc)
UUID = "2f0c7c3e-1111-2222-3333-444455556666"


def node(hostname="cn1.example.com", status="online", *, at=T0, uuid=UUID, address="10.0.0.5") -> NodeRecord:
    return NodeRecord(hostname=hostname, status=status, uuid=uuid, address=address, changed_at=at)


@pytest.fixture
def db(engine):
    """Run ``work(conn)`` in a write transaction of its own, as a consumer does."""

    def run(work):
        with write_transaction(engine) as conn:
            return work(conn)

    return run


def stored(engine, hostname="cn1.example.com") -> NodeRecord | None:
    with read_transaction(engine) as conn:
        return nodes.get(conn, hostname)


def test_a_new_node_is_stored_and_read_back_with_an_aware_time(db, engine):
    assert db(lambda conn: nodes.put(conn, node())) is True
    assert stored(engine) == node()
    assert stored(engine).changed_at.tzinfo is not None
    assert stored(engine).operational


def test_only_online_is_operational():
    assert nodes.OPERATIONAL_STATUS == "online" and "online" in nodes.KNOWN_STATUSES
    for status in ("maintenance", "unreachable", "unlicensed", "Online", "something-new"):
        assert not node(status=status).operational


def test_a_newer_fact_replaces_the_whole_state(db, engine):
    db(lambda conn: nodes.put(conn, node()))
    newer = node(status="maintenance", at=T0 + timedelta(microseconds=1), uuid=None, address=None)
    assert db(lambda conn: nodes.put(conn, newer)) is True
    assert stored(engine) == newer


@pytest.mark.parametrize("at", [T0 - timedelta(seconds=1), T0], ids=["older", "same time"])
def test_an_older_or_equally_old_fact_changes_nothing(db, engine, at):
    db(lambda conn: nodes.put(conn, node()))
    assert db(lambda conn: nodes.put(conn, node(status="unreachable", at=at))) is False
    assert stored(engine) == node()


def test_facts_are_ordered_by_instant_not_by_their_written_zone(db, engine):
    db(lambda conn: nodes.put(conn, node(at=T0)))
    # 11:30 in Prague's winter zone is 10:30 UTC: newer, although "earlier" than 12:00 UTC as text.
    later = node(status="maintenance", at=datetime(2026, 11, 27, 11, 30, tzinfo=timezone(timedelta(hours=1))))
    assert db(lambda conn: nodes.put(conn, later)) is True
    assert stored(engine).status == "maintenance"
    assert stored(engine).changed_at == later.changed_at


def test_a_removal_newer_than_the_state_removes_the_node(db, engine):
    db(lambda conn: nodes.put(conn, node()))
    assert db(lambda conn: nodes.remove(conn, "cn1.example.com", T0 + timedelta(seconds=1))) is True
    assert stored(engine) is None
    assert db(nodes.list_all) == []


def test_a_removal_at_the_same_instant_as_the_state_wins(db, engine):
    db(lambda conn: nodes.put(conn, node()))
    assert db(lambda conn: nodes.remove(conn, "cn1.example.com", T0)) is True
    assert stored(engine) is None
    assert db(lambda conn: nodes.put(conn, node(status="maintenance"))) is False
    assert stored(engine) is None


def test_a_removal_older_than_the_state_changes_nothing(db, engine):
    db(lambda conn: nodes.put(conn, node()))
    assert db(lambda conn: nodes.remove(conn, "cn1.example.com", T0 - timedelta(seconds=1))) is False
    assert stored(engine) == node()


def test_a_repeated_removal_reports_nothing_removed(db, engine):
    db(lambda conn: nodes.put(conn, node()))
    removed_at = T0 + timedelta(seconds=1)
    assert db(lambda conn: nodes.remove(conn, "cn1.example.com", removed_at)) is True
    assert db(lambda conn: nodes.remove(conn, "cn1.example.com", removed_at)) is False
    assert db(lambda conn: nodes.remove(conn, "cn1.example.com", removed_at + timedelta(seconds=1))) is False


def test_an_update_older_than_a_removal_does_not_bring_the_node_back(db, engine):
    db(lambda conn: nodes.put(conn, node()))
    db(lambda conn: nodes.remove(conn, "cn1.example.com", T0 + timedelta(seconds=10)))
    late = node(status="maintenance", at=T0 + timedelta(seconds=5))
    assert db(lambda conn: nodes.put(conn, late)) is False
    assert stored(engine) is None


def test_a_removal_that_arrives_before_the_node_keeps_older_updates_out(db, engine):
    assert db(lambda conn: nodes.remove(conn, "cn1.example.com", T0)) is False  # nothing known to remove
    assert db(lambda conn: nodes.put(conn, node(at=T0 - timedelta(seconds=1)))) is False
    assert stored(engine) is None


def test_a_later_removal_moves_the_tombstone_forward(db, engine):
    db(lambda conn: nodes.remove(conn, "cn1.example.com", T0))
    db(lambda conn: nodes.remove(conn, "cn1.example.com", T0 + timedelta(seconds=10)))
    assert db(lambda conn: nodes.put(conn, node(at=T0 + timedelta(seconds=5)))) is False
    assert stored(engine) is None


def test_a_node_comes_back_with_an_update_newer_than_its_removal(db, engine):
    db(lambda conn: nodes.put(conn, node()))
    db(lambda conn: nodes.remove(conn, "cn1.example.com", T0 + timedelta(seconds=1)))
    back = node(status="initializing", at=T0 + timedelta(seconds=2))
    assert db(lambda conn: nodes.put(conn, back)) is True
    assert stored(engine) == back


def test_list_all_is_sorted_by_hostname_and_leaves_removed_nodes_out(db):
    for hostname in ("cn3", "cn1", "cn2", "cn0"):
        db(lambda conn, h=hostname: nodes.put(conn, node(h)))
    db(lambda conn: nodes.remove(conn, "cn0", T0 + timedelta(seconds=1)))
    assert [n.hostname for n in db(nodes.list_all)] == ["cn1", "cn2", "cn3"]


def test_get_of_an_unknown_node_is_none(engine):
    assert stored(engine, "nowhere") is None


@pytest.mark.parametrize("record, problem", [
    (node(hostname=""), "hostname"),
    (node(hostname="a" * 256), "at most 255"),
    (node(hostname="cn1 example"), "hostname"),
    (node(status=""), "status"),
    (node(status="x" * 33), "status"),
    (node(uuid="not-a-uuid"), "uuid"),
    (node(address="10.0.0.5 10.0.0.6"), "address"),
    (NodeRecord(hostname="cn1", status="online", uuid=None, address=None, changed_at=T0.replace(tzinfo=None)),
     "timezone"),
])
def test_a_record_that_could_not_be_stored_is_refused_with_a_sentence(db, engine, record, problem):
    with pytest.raises(ValueError, match=problem):
        db(lambda conn: nodes.put(conn, record))
    assert db(nodes.list_all) == []


def test_the_longest_hostname_is_stored(db, engine):
    hostname = "a" * 255
    assert db(lambda conn: nodes.put(conn, node(hostname))) is True
    assert stored(engine, hostname).hostname == hostname


def test_remove_refuses_an_unstorable_hostname_or_a_naive_time(db):
    with pytest.raises(ValueError, match="at most 255"):
        db(lambda conn: nodes.remove(conn, "a" * 256, T0))
    with pytest.raises(ValueError, match="timezone"):
        db(lambda conn: nodes.remove(conn, "cn1", T0.replace(tzinfo=None)))
