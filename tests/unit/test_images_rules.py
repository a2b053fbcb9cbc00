"""domain.images: the image's public shape (reference §6.2), its event state, and the import/update
rules that need no catalogue (§3.3, §3.3.1, §3.4)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from imagesvc.domain import images
from imagesvc.shared.db.records import ImageRecord
from tests.support.records import UUID, image_record

DC_REQUIRED = (
    'You have to specify to which datacenter shall the image be bound. Either use the "dc" parameter or set the '
    '"dc_bound" parameter to false.'
)
PUBLIC_KEYS = [
    "dc_bound", "name", "uuid", "alias", "version", "owner", "access", "desc", "ostype", "size", "resize",
    "deploy", "tags", "status", "created",
]


def record(**changes) -> ImageRecord:
    return image_record(**changes)


# --- public_view ----------------------------------------------------------------------------------


def test_public_view_has_the_original_keys_in_the_original_order():
    assert list(images.public_view(record())) == PUBLIC_KEYS


def test_public_view_values():
    assert images.public_view(record()) == {
        "dc_bound": False,
        "name": "centos-7",
        "uuid": UUID,
        "alias": "centos-7",
        "version": "20200101",
        "owner": "admin",
        "access": 1,
        "desc": "CentOS 7 64-bit",
        "ostype": 1,
        "size": 10240,
        "resize": True,
        "deploy": False,
        "tags": ["linux", "base"],
        "status": 1,
        "created": "2020-01-02T10:11:12.123456Z",
    }


def test_public_view_dc_bound_is_a_boolean():
    assert images.public_view(record(dc_bound="main"))["dc_bound"] is True
    assert images.public_view(record(dc_bound=None))["dc_bound"] is False


def test_public_view_tags_is_a_copy():
    image = record()
    images.public_view(image)["tags"].append("changed")
    assert image.tags == ["linux", "base"]


@pytest.mark.parametrize(
    "created, expected",
    [
        (datetime(2020, 1, 2, 10, 11, 12, 123456, tzinfo=timezone.utc), "2020-01-02T10:11:12.123456Z"),
        (datetime(2020, 1, 2, 10, 11, 12, 500, tzinfo=timezone.utc), "2020-01-02T10:11:12.000500Z"),
        (datetime(2020, 1, 2, 10, 11, 12, tzinfo=timezone.utc), "2020-01-02T10:11:12Z"),
        (datetime(2020, 1, 2, 12, 11, 12, tzinfo=timezone(timedelta(hours=2))), "2020-01-02T10:11:12Z"),
    ],
)
def test_created_is_iso_8601_utc_with_z_and_microseconds_only_when_non_zero(created, expected):
    assert images.public_view(record(created=created))["created"] == expected


# --- to_state ------------------------------------------------------------------------------------


def test_to_state_extends_the_public_view_with_binding_attachments_changed_and_manifest():
    state = images.to_state(record(dc_bound="main", dcs=["zeta", "main"]))
    assert list(state)[: len(PUBLIC_KEYS)] == PUBLIC_KEYS
    assert state["dc_bound"] == "main"
    assert state["dcs"] == ["main", "zeta"]
    assert state["changed"] == "2020-01-02T11:11:12.123456Z"
    assert state["manifest"] == {"uuid": UUID, "name": "centos-7"}


# --- check_import_shape ---------------------------------------------------------------------------


def payload(**changes) -> dict:
    base = {"name": "centos-7", "manifest_url": f"https://images.example.com/images/{UUID}", "dc": "main"}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


def test_check_import_shape_accepts_a_complete_import():
    values, errors = images.check_import_shape(payload(alias="c7", access="1", resize="true"))
    assert errors == {}
    assert values == {
        "manifest_url": f"https://images.example.com/images/{UUID}",
        "dc": "main",
        "alias": "c7",
        "access": 1,
        "resize": True,
    }


def test_check_import_shape_requires_manifest_url():
    values, errors = images.check_import_shape(payload(manifest_url=...))
    assert errors == {"manifest_url": ["This field is required."]}


def test_check_import_shape_reports_an_invalid_manifest_url():
    _, errors = images.check_import_shape(payload(manifest_url="ftp://x.test/"))
    assert errors == {"manifest_url": ["Enter a valid URL."]}


def test_check_import_shape_requires_dc_for_a_default_bound_image_under_dc_and_dc_bound():
    _, errors = images.check_import_shape(payload(dc=...))
    assert errors == {"dc_bound": [DC_REQUIRED], "dc": [DC_REQUIRED]}
    assert list(errors) == ["dc_bound", "dc"]


@pytest.mark.parametrize("dc_bound", [True, "true", 1, "1"])
def test_check_import_shape_requires_dc_for_an_explicitly_bound_image(dc_bound):
    _, errors = images.check_import_shape(payload(dc=..., dc_bound=dc_bound))
    assert errors == {"dc_bound": [DC_REQUIRED], "dc": [DC_REQUIRED]}


@pytest.mark.parametrize("dc_bound", [False, "false", "False", 0, "0"])
def test_check_import_shape_needs_no_dc_for_a_global_image(dc_bound):
    values, errors = images.check_import_shape(payload(dc=..., dc_bound=dc_bound))
    assert errors == {}
    assert values["dc_bound"] is False


def test_check_import_shape_bound_with_dc_is_valid():
    values, errors = images.check_import_shape(payload(dc_bound=True))
    assert errors == {}
    assert values["dc"] == "main"


def test_check_import_shape_skips_the_dc_rule_while_a_field_is_invalid():
    # Object-level checks run only when every field is individually valid (§3.3.1).
    _, errors = images.check_import_shape(payload(dc=..., access=2))
    assert errors == {"access": ["Select a valid choice. 2 is not one of the available choices."]}


def test_check_import_shape_skips_the_dc_rule_when_manifest_url_is_missing():
    _, errors = images.check_import_shape(payload(dc=..., manifest_url=...))
    assert errors == {"manifest_url": ["This field is required."]}


@pytest.mark.parametrize(
    "name, messages",
    [
        ("-bad", ["Invalid value."]),
        ("has space", ["Invalid value."]),
        ("n" * 33, ["Ensure this value has at most 32 characters (it has 33)."]),
    ],
)
def test_check_import_shape_reports_a_bad_name_under_name(name, messages):
    _, errors = images.check_import_shape(payload(name=name))
    assert errors == {"name": messages}


def test_check_import_shape_orders_errors_as_the_original_serializer():
    _, errors = images.check_import_shape(
        payload(name="-bad", manifest_url=..., tags="a.b", alias="<x>", dc_bound="maybe")
    )
    assert list(errors) == ["manifest_url", "dc_bound", "name", "alias", "tags"]


def test_check_update_shape_validates_only_supplied_update_fields():
    values, errors = images.check_update_shape({"alias": "new", "deploy": "yes", "name": "ignored", "dc": "x"})
    assert values == {"alias": "new"}
    assert errors == {"deploy": ["Must be a valid boolean."]}


# --- rebind (PUT dc_bound) ------------------------------------------------------------------------


def rebind(dc_bound, dcs, wanted, *, superadmin=True):
    errors: dict = {}
    bound = images.rebind(current=dc_bound, attached=dcs, wanted=wanted, is_superadmin=superadmin, errors=errors)
    return bound, errors


def test_rebind_true_binds_to_the_single_attached_dc():
    assert rebind(None, ["second"], True) == ("second", {})


def test_rebind_true_on_an_image_attached_to_several_dcs_is_an_error():
    assert rebind(None, ["a", "b"], True) == (None, {"dc_bound": ["Image is attached into more than one datacenter."]})


def test_rebind_true_on_an_image_attached_nowhere_is_an_error():
    assert rebind(None, [], True) == (None, {"dc_bound": ["Image is not attached into any datacenters."]})


def test_rebind_true_on_an_already_bound_image_keeps_its_binding():
    # The original only re-evaluates dc_bound when the value changes.
    assert rebind("main", ["main", "other"], True) == ("main", {})


@pytest.mark.parametrize("dc_bound, dcs", [("main", ["main"]), (None, ["a", "b"]), (None, [])])
def test_rebind_false_makes_the_image_global(dc_bound, dcs):
    assert rebind(dc_bound, dcs, False) == (None, {})


def test_only_a_superadmin_may_change_dc_bound_but_anyone_may_restate_it():
    forbidden = {"dc_bound": ["You don't have permission to modify this attribute."]}
    assert rebind("main", ["main"], False, superadmin=False) == ("main", forbidden)
    assert rebind(None, ["main"], True, superadmin=False) == (None, forbidden)
    assert rebind("main", ["main"], True, superadmin=False) == ("main", {})
    assert rebind(None, [], False, superadmin=False) == (None, {})


def test_the_public_view_of_an_event_state_equals_the_records():
    from datetime import datetime, timezone

    from imagesvc.domain.images import public_view, public_view_of_state, to_state
    from imagesvc.shared.db.records import ImageRecord

    for bound, micro in (("main", 123456), (None, 0)):
        when = datetime(2026, 1, 2, 3, 4, 5, micro, tzinfo=timezone.utc)
        image = ImageRecord(uuid="u", name="n", alias="a", version="1", desc="d", owner="o", access=3, size=1,
                            ostype=1, deploy=False, resize=True, status=1, tags=["t"], created=when, changed=when,
                            dc_bound=bound, dcs=["main"] if bound else [])
        assert public_view_of_state(to_state(image)) == public_view(image)
        assert list(public_view_of_state(to_state(image))) == list(public_view(image))
