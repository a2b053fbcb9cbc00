"""The permission rules of reference §4.2-4.3, on plain records."""

from __future__ import annotations

import pytest

from imagesvc.domain import policy
from imagesvc.shared.db.records import DatacenterRecord, Grants, UserRecord
from imagesvc.shared.errors import Refused

USER = UserRecord(id=5, username="u", is_superadmin=False, default_dc_id=1)


def access(permissions=None, owned=(), **user) -> policy.Access:
    held = {dc: frozenset(p) for dc, p in (permissions or {}).items()}
    return policy.Access(UserRecord(**{**USER.__dict__, **user}), Grants(held, frozenset(owned)))


def test_image_admin_needs_image_admin_and_admin_in_the_same_datacenter():
    split = access({"dc1": ["image_admin"], "dc2": ["admin"]})
    assert not split.is_image_admin("dc1") and not split.is_image_admin("dc2")
    assert split.image_admin_dcs() == frozenset()
    both = access({"dc1": ["image_admin", "admin"]})
    assert both.is_image_admin("dc1") and both.image_admin_dcs() == {"dc1"}


def test_a_datacenter_owner_is_its_admin():
    owner = access({"dc1": ["image_admin"]}, owned=["dc1"])
    assert owner.is_admin("dc1") and owner.is_image_admin("dc1")
    assert access(owned=["dc1"]).is_admin("dc1") and not access(owned=["dc1"]).image_admin_dcs()


@pytest.mark.parametrize("subject, message", [
    (None, "Permission denied"),
    (access(), "Permission denied"),
    (access({"dc1": ["admin"]}), "Permission denied"),
    (access({"dc1": ["admin", "image_admin"]}, is_active=False), "Permission denied"),
    (access({"dc1": ["admin", "image_admin"]}, api_access=False), "Permission denied"),
])
def test_the_entry_permission(subject, message):
    with pytest.raises(Refused) as refused:
        policy.require_image_admin_somewhere(subject)
    assert (refused.value.http_code, refused.value.detail) == (403, message)


def test_the_object_rule_and_the_list_scope():
    admin = access({"dc1": ["admin", "image_admin"], "dc2": ["admin"]})
    assert policy.may_manage(admin, "dc1")
    assert not policy.may_manage(admin, "dc2") and not policy.may_manage(admin, None)
    assert policy.list_scope(admin) == {"dc1"}
    root = access(is_superadmin=True)
    assert policy.may_manage(root, None) and policy.list_scope(root) is None


def test_an_import_needs_image_import_admin_in_the_target_datacenter():
    image_admin = access({"dc1": ["admin", "image_admin"]})
    with pytest.raises(Refused) as refused:
        policy.require_import_into(image_admin, "dc1")
    assert refused.value.detail == "You do not have permission to perform this action."
    policy.require_import_into(access({"dc1": ["admin", "image_admin", "image_import_admin"]}), "dc1")
    with pytest.raises(Refused):  # import admin alone is not enough: the object rule comes first
        policy.require_import_into(access({"dc1": ["image_import_admin"]}), "dc1")


def test_which_datacenters_a_user_sees():
    dc = DatacenterRecord(id=2, name="dc2")
    assert not access().sees(dc)
    assert access().sees(DatacenterRecord(id=1, name="main"))  # their current datacenter
    assert access().sees(DatacenterRecord(id=2, name="dc2", access=1))  # public
    assert access().sees(DatacenterRecord(id=2, name="dc2", owner_id=USER.id))
    assert access({"dc2": []}).sees(dc)  # a role of theirs is attached to it, even without permissions
    assert access(is_superadmin=True).sees(dc)


def test_who_reads_a_task():
    admin = access({"dc1": ["admin"]})
    assert policy.may_read_task(admin, "dc1", user_id=1, owner_id=1)
    assert not policy.may_read_task(admin, "dc2", user_id=1, owner_id=1)
    assert policy.may_read_task(access(), "dc2", user_id=USER.id, owner_id=1)
    assert policy.may_read_task(access(), "dc2", user_id=1, owner_id=USER.id)


@pytest.mark.parametrize("subject, admitted", [
    (None, False),
    (access(), False),
    (access({"dc1": ["admin", "image_admin"]}), False),  # ImageAdmin is not enough
    (access({"dc2": ["image_import_admin"]}), True),  # ImageImportAdmin anywhere, even without Admin
    (access({"dc2": ["image_import_admin"]}, is_active=False), False),
    (access(is_superadmin=True), True),
])
def test_the_imagestore_entry_permission(subject, admitted):
    if admitted:
        assert policy.require_image_import_admin_somewhere(subject) is subject
        return
    with pytest.raises(Refused) as refused:
        policy.require_image_import_admin_somewhere(subject)
    assert (refused.value.http_code, refused.value.detail) == (403, "Permission denied")
