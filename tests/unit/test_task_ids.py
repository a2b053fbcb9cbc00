"""domain.tasks: task ids as the original API shows them (reference §6.1, §7.1)."""

from __future__ import annotations

import hashlib
import re

import pytest

from imagesvc.domain import tasks

TASK_ID = re.compile(r"^(\d+)e(\d+)u(\d+)-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}$")
DUMMY_ID = re.compile(r"^(\d+)d(\d+)u(\d+)-([0-9a-f]{8})-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}$")


def test_new_task_id_reads_user_execute_owner_unbound_dc_then_four_hex_groups():
    task_id = tasks.new_task_id(user_id=12, owner_id=34, dc_id=5)
    match = TASK_ID.match(task_id)
    assert match, task_id
    assert match.groups() == ("12", "34", "5")


def test_new_task_id_groups_are_a_uuid4_minus_its_last_group():
    task_id = tasks.new_task_id(user_id=1, owner_id=1, dc_id=1)
    groups = task_id.split("-")[1:]
    assert [len(g) for g in groups] == [8, 4, 4, 4]
    assert groups[2][0] == "4"  # uuid version nibble
    assert groups[3][0] in "89ab"  # uuid variant nibble


def test_new_task_ids_are_unique():
    ids = {tasks.new_task_id(user_id=1, owner_id=2, dc_id=3) for _ in range(200)}
    assert len(ids) == 200


@pytest.mark.parametrize("user_id, owner_id, dc_id", [(1, 1, 1), (7, 12, 3), (1234, 99, 100000)])
def test_parse_task_id_round_trips_a_new_task_id(user_id, owner_id, dc_id):
    task_id = tasks.new_task_id(user_id=user_id, owner_id=owner_id, dc_id=dc_id)
    assert tasks.parse_task_id(task_id) == {
        "user_id": user_id, "type": "e", "owner_id": owner_id, "group": "u", "dc_id": dc_id,
    }


@pytest.mark.parametrize("kind", list("deamif"))
@pytest.mark.parametrize("group", ["d", "u"])
def test_parse_task_id_accepts_every_task_type_and_group(kind, group):
    parts = tasks.parse_task_id(f"3{kind}4{group}5-0123abcd-ef01-2345-6789")
    assert parts == {"user_id": 3, "type": kind, "owner_id": 4, "group": group, "dc_id": 5}


@pytest.mark.parametrize(
    "task_id",
    [
        "",
        "garbage",
        "1e1u1",
        "1e1u1-0123abcd-ef01-2345",  # three groups
        "1e1u1-0123abcd-ef01-2345-6789-abcd",  # five groups
        "1e1u1-0123abc-ef01-2345-6789",  # short first group
        "1e1u1-0123abcd-ef0-2345-6789",  # short group
        "1e1u1-0123abcd-ef01-2345-67890",  # long last group
        "1x1u1-0123abcd-ef01-2345-6789",  # unknown task type
        "1e1x1-0123abcd-ef01-2345-6789",  # unknown task group
        "e1u1-0123abcd-ef01-2345-6789",  # no user id
        "1eu1-0123abcd-ef01-2345-6789",  # no owner id
        "1e1u-0123abcd-ef01-2345-6789",  # no dc id
        "ae1u1-0123abcd-ef01-2345-6789",
        "1e1u1-0123abcd-ef01-2345-6789\n",
        " 1e1u1-0123abcd-ef01-2345-6789",
        "1e1u1_0123abcd_ef01_2345_6789",
        "2f0c7c3e-1111-2222-3333-444455556666",  # a plain uuid
    ],
)
def test_parse_task_id_returns_none_for_malformed_ids(task_id):
    assert tasks.parse_task_id(task_id) is None


def test_dummy_task_id_first_group_is_md5_tail_of_the_user_id():
    task_id = tasks.dummy_task_id(user_id=1, dc_id=1)
    match = DUMMY_ID.match(task_id)
    assert match, task_id
    assert match.group(4) == "6f75849b"
    assert task_id.startswith("1d1u1-6f75849b-")


@pytest.mark.parametrize("user_id", [2, 7, 42, 1000])
def test_dummy_task_id_uses_the_requesting_user_for_user_and_owner(user_id):
    task_id = tasks.dummy_task_id(user_id=user_id, dc_id=3)
    match = DUMMY_ID.match(task_id)
    assert match, task_id
    assert match.group(1) == match.group(2) == str(user_id)
    assert match.group(3) == "3"
    assert match.group(4) == hashlib.md5(str(user_id).encode()).hexdigest()[-8:]


def test_dummy_task_id_parses_as_type_d():
    parts = tasks.parse_task_id(tasks.dummy_task_id(user_id=5, dc_id=2))
    assert parts == {"user_id": 5, "type": "d", "owner_id": 5, "group": "u", "dc_id": 2}


def test_is_dummy_is_true_only_for_dummy_ids():
    assert tasks.is_dummy(tasks.dummy_task_id(user_id=1, dc_id=1)) is True
    assert tasks.is_dummy(tasks.new_task_id(user_id=1, owner_id=1, dc_id=1)) is False
    assert tasks.is_dummy("1a1u1-0123abcd-ef01-2345-6789") is False


@pytest.mark.parametrize("task_id", ["", "1d1u1", "1d1u1-6f75849b", "nonsense"])
def test_is_dummy_is_false_for_malformed_ids(task_id):
    assert tasks.is_dummy(task_id) is False


def test_control_characters_make_a_task_id_malformed():
    # (A NUL cannot be stored by PostgreSQL: such an id must be refused before any lookup.)
    assert tasks.parse_task_id("1e1u1-aaaa\x00aaa-bbbb-cccc-dddd") is None
    assert tasks.parse_task_id("1e1u1-aaaa\naaa-bbbb-cccc-dddd") is None
    assert tasks.parse_task_id("1e1u1-zzzzzzzz-bbbb-cccc-dddd") is not None  # not hex: the original accepts it
