"""Names and text fields at their edges (reliability plan S10): traversal, control characters,
Unicode tricks and lengths. Either refused with a 4xx naming the problem (never a 500, never a
command), or stored and returned byte-identical."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from tests.e2e.conftest import submitted_commands
from tests.support.origin import Origin

pytestmark = pytest.mark.e2e

BAD_NAMES = ["../../etc/passwd", "a/b", "a\\b", "\x00x", "x" * 65, "x" * 256, "x" * 10_000, "\u202ecod.exe",
             "caf\u00e9", "cafe\u0301", "\U0001f600", "   ", ".hidden", "-dash"]


@pytest.fixture(scope="module")
def origin():
    served = Origin()
    yield served
    served.close()


@pytest.mark.parametrize("bad", BAD_NAMES, ids=range(len(BAD_NAMES)))
def test_an_image_name_outside_the_rules_is_refused_before_anything_happens(system, origin, bad):
    manifest_url, _ = origin.add_manifest()
    before = submitted_commands(system)
    with system.client() as client:
        answer = client.post(f"/image/{quote(bad, safe='')}/", json={"manifest_url": manifest_url, "dc": "main"})
        assert 400 <= answer.status_code < 500, (answer.status_code, answer.text)
        assert answer.headers["content-type"].startswith("application/json")
        if answer.status_code == 400:
            assert "name" in answer.json()["result"]
        listed = client.get("/image/").json()["result"]
        assert bad not in listed
    assert submitted_commands(system) == before


def test_a_reserved_device_name_is_just_a_name_here(system, origin):
    """The storage path never derives from the name (the store uses the uuid), so "CON" is harmless."""
    manifest_url, _ = origin.add_manifest()
    with system.client() as client:
        answer = client.post("/image/CON/", json={"manifest_url": manifest_url, "dc": "main"})
        assert answer.status_code in (200, 201), answer.text
        assert client.get("/image/CON/").json()["result"]["name"] == "CON"
        client.delete("/image/CON/")


@pytest.mark.parametrize("text", ["caf\u00e9 \U0001f600", "cafe\u0301", "\u202eevil", "tab\there"])
def test_unicode_descriptions_are_stored_and_returned_byte_identical(system, origin, name, text):
    manifest_url, _ = origin.add_manifest()
    with system.client() as client:
        answer = client.post(f"/image/{name}/", json={"manifest_url": manifest_url, "dc": "main", "desc": text})
        assert answer.status_code in (200, 201), answer.text
        shown = client.get(f"/image/{name}/").json()["result"]
        assert shown["desc"] == text


@pytest.mark.parametrize("length, accepted", [(128, True), (129, False), (10_000, False)])
def test_description_length_is_enforced_at_the_edge(system, origin, name, length, accepted):
    manifest_url, _ = origin.add_manifest()
    with system.client() as client:
        answer = client.post(f"/image/{name}/", json={"manifest_url": manifest_url, "dc": "main", "desc": "d" * length})
        if accepted:
            assert answer.status_code in (200, 201), answer.text
        else:
            assert answer.status_code == 400 and "desc" in answer.json()["result"], answer.text
            assert client.get(f"/image/{name}/").status_code == 404


def test_control_characters_in_a_description_are_refused_with_the_field_named(system, origin, name):
    manifest_url, _ = origin.add_manifest()
    with system.client() as client:
        answer = client.post(f"/image/{name}/", json={"manifest_url": manifest_url, "dc": "main", "desc": "a\x00b"})
        assert answer.status_code == 400 and "desc" in answer.json()["result"], answer.text
