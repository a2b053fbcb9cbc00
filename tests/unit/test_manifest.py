"""domain.manifest: what an import accepts (reference §10.1) and what an image stores (§10.2)."""

from __future__ import annotations

import copy
from datetime import datetime, timezone

import orjson
import pytest

from imagesvc.domain import manifest
from imagesvc.domain.manifest import ManifestError

UUID = "2f0c7c3e-1111-2222-3333-444455556666"
COULD_NOT_PARSE = "Could not parse image manifest."
INVALID = "Invalid image manifest."
MULTIPLE = "Multiple files inside manifest are not supported."
NIL_OWNER = "00000000-0000-0000-0000-000000000000"
NOW = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone.utc)


def source(**changes) -> dict:
    base = {
        "v": 2,
        "uuid": UUID,
        "name": "centos-7",
        "version": "20200101",
        "type": "zvol",
        "os": "linux",
        "files": [{"size": 402653184, "sha1": "a" * 40, "compression": "gzip"}],
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


def raw(**changes) -> bytes:
    return orjson.dumps(source(**changes))


def parse_error(data: bytes) -> str:
    with pytest.raises(ManifestError) as caught:
        manifest.parse(data)
    return str(caught.value)


# --- parse() --------------------------------------------------------------------------------------


def test_parse_returns_the_manifest_of_a_valid_document():
    parsed = manifest.parse(raw(description="CentOS", image_size=10240))
    assert parsed["uuid"] == UUID
    assert parsed["version"] == "20200101"
    assert parsed["image_size"] == 10240
    assert parsed["description"] == "CentOS"


def test_parse_normalises_the_uuid_to_its_canonical_form():
    parsed = manifest.parse(raw(uuid=UUID.upper()))
    assert parsed["uuid"] == UUID


@pytest.mark.parametrize("data", [b"", b"not json", b"{", b"{'uuid': 1}", b"\xff\xfe", b"<html></html>"])
def test_parse_refuses_what_is_not_json(data):
    assert parse_error(data) == COULD_NOT_PARSE


@pytest.mark.parametrize("data", [b"[]", b"[1, 2]", b'"text"', b"42", b"null", b"true"])
def test_parse_refuses_json_that_is_not_an_object(data):
    assert parse_error(data) == INVALID


@pytest.mark.parametrize("key", ["uuid", "version", "type", "os", "files"])
def test_parse_refuses_a_manifest_missing_a_required_key(key):
    assert parse_error(raw(**{key: ...})) == INVALID


@pytest.mark.parametrize(
    "changes",
    [
        {"uuid": "not-a-uuid"},
        {"uuid": ""},
        {"uuid": 12},
        {"version": ""},
        {"version": None},
        {"type": None},
        {"os": None},
        {"os": 1},
        {"files": []},
        {"files": {}},
        {"files": "file"},
        {"files": ["not-an-object"]},
        {"image_size": "ten"},
        {"image_size": 10.5},
        {"image_size": True},
        {"image_size": -1},
        {"image_size": "-1"},
        {"image_size": 2**31},
        {"image_size": 18446744073709551615},
        {"image_size": "1" * 5000},
        {"image_size": "\u00b2"},
        {"description": 12},
        {"tags": []},
        {"tags": "erigones"},
        {"requirements": "min"},
    ],
)
def test_parse_refuses_a_manifest_with_a_bad_value(changes):
    # (A numeric string image_size is accepted: the original int()s it.)
    assert parse_error(raw(**changes)) == INVALID


@pytest.mark.parametrize("kind", ["zone-dataset", "lx-dataset"])
def test_parse_accepts_zone_types_without_os(kind):
    parsed = manifest.parse(raw(type=kind, os=...))
    assert parsed["type"] == kind


def test_parse_refuses_more_than_one_file():
    assert parse_error(raw(files=[{"size": 1}, {"size": 2}])) == MULTIPLE


# --- ostype() -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, os_name, expected",
    [
        ("zone-dataset", None, 5),
        ("zone-dataset", "linux", 5),
        ("lx-dataset", None, 6),
        ("lx-dataset", "smartos", 6),
        ("zvol", "smartos", 2),
        ("zvol", "SmartOS", 2),
        ("zvol", "SMARTOS", 2),
        ("zvol", "linux", 1),
        ("zvol", "illumos", 2),
        ("zvol", "bsd", 3),
        ("zvol", "windows", 4),
        ("other", "windows", 4),
        ("zvol", "Windows", 1),
        ("zvol", "BSD", 1),
        ("zvol", "plan9", 1),
        ("zvol", "", 1),
    ],
)
def test_ostype_maps_type_and_os(kind, os_name, expected):
    document = {"type": kind}
    if os_name is not None:
        document["os"] = os_name
    assert manifest.ostype(document) == expected


# --- size_mb() ------------------------------------------------------------------------------------


def test_size_mb_is_image_size_when_present():
    assert manifest.size_mb({"image_size": 10240}) == 10240


@pytest.mark.parametrize("document", [{}, {"image_size": None}, {"image_size": True}])
def test_size_mb_defaults_to_1024(document):
    assert manifest.size_mb(document) == 1024


# --- import_defaults() ----------------------------------------------------------------------------


def test_import_defaults_takes_version_description_and_tags():
    defaults = manifest.import_defaults(
        source(description="CentOS 7", tags={"erigones": ["linux", "base"], "resize": True, "deploy": True})
    )
    assert defaults == {
        "version": "20200101",
        "desc": "CentOS 7",
        "resize": True,
        "deploy": True,
        "tags": ["linux", "base"],
    }


def test_import_defaults_truncates_the_description_to_128_characters():
    defaults = manifest.import_defaults(source(description="d" * 300))
    assert defaults["desc"] == "d" * 128


def test_import_defaults_omits_falsy_values():
    defaults = manifest.import_defaults(
        source(description="", tags={"erigones": [], "resize": False, "deploy": False})
    )
    assert defaults == {"version": "20200101"}


def test_import_defaults_of_a_bare_hvm_manifest_offer_only_the_version():
    assert manifest.import_defaults(source()) == {"version": "20200101"}


@pytest.mark.parametrize("kind", ["zone-dataset", "lx-dataset"])
def test_import_defaults_resize_is_true_for_zone_types_without_tags_resize(kind):
    defaults = manifest.import_defaults(source(type=kind, os=...))
    assert defaults["resize"] is True


@pytest.mark.parametrize("kind", ["zone-dataset", "lx-dataset"])
def test_import_defaults_explicit_false_resize_of_a_zone_manifest_offers_no_resize(kind):
    # The original reads tags.get("resize", <zone default>) and offers it only when truthy, so an
    # explicit false leaves the request default (false) in place.
    defaults = manifest.import_defaults(source(type=kind, os=..., tags={"resize": False}))
    assert "resize" not in defaults


# --- default_file_url() ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "manifest_url, expected",
    [
        (f"https://repo.test/images/{UUID}", f"https://repo.test/images/{UUID}/file"),
        (f"https://repo.test/images/{UUID}/", f"https://repo.test/images/{UUID}/file"),
        (f"https://repo.test/images/{UUID}///", f"https://repo.test/images/{UUID}/file"),
    ],
)
def test_default_file_url_appends_file_to_the_manifest_url(manifest_url, expected):
    assert manifest.default_file_url(manifest_url) == expected


# --- build() (reference §10.2) --------------------------------------------------------------------


def build(src: dict | None = None, **changes):
    args = dict(
        uuid=UUID, alias="centos", version="1.2", desc="My CentOS", access=3, ostype=1, size=10240,
        tags=["linux", "base"], resize=True, deploy=False, now=NOW,
    )
    args.update(changes)
    return manifest.build(source() if src is None else src, **args)


def test_build_forces_identity_and_description_fields():
    built = build(source(name="upstream-name", version="0.1", description="upstream", uuid=UUID))
    assert built["uuid"] == UUID
    assert built["name"] == "centos"
    assert built["version"] == "1.2"
    assert built["description"] == "My CentOS"
    assert built["state"] == "active"
    assert built["v"] == 2


def test_build_starts_from_the_documented_defaults():
    built = build({"type": "zvol", "files": [{}]})
    assert built["v"] == 2
    assert built["owner"] == NIL_OWNER
    assert built["state"] == "active"


def test_build_keeps_other_source_keys_verbatim():
    extra = {
        "homepage": "https://centos.org",
        "requirements": {"min_platform": {"7.0": "20200101T000000Z"}},
        "owner": "930896af-bf8c-48d4-885c-6573a94b1853",
        "urn": "sdc:sdc:centos:1",
        "files": [{"size": 1, "sha1": "b" * 40}],
    }
    built = build(source(**extra))
    for key, value in extra.items():
        assert built[key] == value


def test_build_overrides_source_state():
    built = build(source(state="disabled", disabled=True, public=True))
    assert built["state"] == "active"
    assert built["disabled"] is False
    assert built["public"] is False


@pytest.mark.parametrize(
    "access, public, disabled",
    [(1, True, False), (2, False, True), (3, False, False), (4, False, False), (9, False, True)],
)
def test_build_derives_public_and_disabled_from_access(access, public, disabled):
    built = build(access=access)
    assert built["public"] is public
    assert built["disabled"] is disabled
    assert built["tags"]["internal"] is (access == 9)


def test_build_replaces_the_source_tags_object():
    built = build(source(tags={"erigones": ["old"], "resize": False, "deploy": True, "vendor": "x"}),
                  tags=["new"], resize=True, deploy=False, access=3)
    assert built["tags"] == {"erigones": ["new"], "resize": True, "deploy": False, "internal": False}


@pytest.mark.parametrize("ostype, os_name", [(1, "linux"), (2, "illumos"), (3, "bsd"), (4, "windows")])
def test_build_hvm_sets_os_type_zvol_size_and_default_cpu_type(ostype, os_name):
    built = build(source(os="something-else"), ostype=ostype, size=20480)
    assert built["os"] == os_name
    assert built["type"] == "zvol"
    assert built["image_size"] == 20480
    assert built["cpu_type"] == "qemu64"


def test_build_hvm_keeps_an_explicit_cpu_type_and_drivers():
    built = build(source(cpu_type="host", nic_driver="virtio", disk_driver="virtio"))
    assert built["cpu_type"] == "host"
    assert built["nic_driver"] == "virtio"
    assert built["disk_driver"] == "virtio"


def test_build_hvm_overrides_source_image_size_with_the_size():
    assert build(source(image_size=1), size=4096)["image_size"] == 4096


def test_build_preserves_type_other():
    assert build(source(type="other"))["type"] == "other"


@pytest.mark.parametrize("ostype, kind, os_name", [(5, "zone-dataset", "smartos"), (6, "lx-dataset", "linux")])
def test_build_zone_drops_hvm_keys_and_sets_the_zone_type(ostype, kind, os_name):
    src = source(type="zvol", image_size=10240, nic_driver="virtio", disk_driver="virtio", cpu_type="host")
    built = build(src, ostype=ostype)
    assert built["type"] == kind
    assert built["os"] == os_name
    for key in ("image_size", "nic_driver", "disk_driver", "cpu_type"):
        assert key not in built


def test_build_zone_from_type_other_still_becomes_a_zone_type():
    assert build(source(type="other"), ostype=5)["type"] == "zone-dataset"


def test_build_sets_published_at_when_absent():
    built = build(source())
    stamp = built["published_at"]
    assert stamp.startswith("2024-05-06T07:08:09")
    assert stamp.endswith("Z")
    assert datetime.fromisoformat(stamp.replace("Z", "+00:00")).replace(microsecond=0) == NOW.replace(microsecond=0)


def test_build_keeps_an_existing_published_at():
    built = build(source(published_at="2019-01-01T00:00:00Z"))
    assert built["published_at"] == "2019-01-01T00:00:00Z"


def test_build_does_not_modify_the_source():
    src = source(tags={"erigones": ["x"]}, image_size=1)
    before = copy.deepcopy(src)
    build(src, ostype=5)
    assert src == before


def test_a_numeric_string_image_size_is_read_as_an_integer():
    from imagesvc.domain.manifest import parse

    assert parse(raw(image_size="20480"))["image_size"] == 20480


def test_manifest_flags_are_taken_by_truthiness_not_refused():
    from imagesvc.domain.manifest import import_defaults

    offered = import_defaults(source(tags={"resize": "no", "deploy": 1}))
    assert offered["resize"] is True and offered["deploy"] is True
