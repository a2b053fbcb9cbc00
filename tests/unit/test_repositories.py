"""Remote image repositories: URLs, the local repository, list parsing and ordering, the API's objects."""

from __future__ import annotations

from datetime import datetime, timezone

import orjson
import pytest

from imagesvc.domain import repositories
from imagesvc.shared.db.records import RepositoryRecord

UUID = "2f0c7c3e-1111-2222-3333-444455556666"


class TestUrls:
    @pytest.mark.parametrize("url, listed, manifest", [
        ("https://images.danube.cloud", "https://images.danube.cloud/images",
         f"https://images.danube.cloud/images/{UUID}"),
        ("https://host/repo/", "https://host/repo/images", f"https://host/repo/images/{UUID}"),
        # The original's urljoin quirk, kept: without a trailing slash the last segment is replaced.
        ("https://host/repo", "https://host/images", f"https://host/images/{UUID}"),
        ("http://10.0.0.5:8080/a/b", "http://10.0.0.5:8080/a/images", f"http://10.0.0.5:8080/a/images/{UUID}"),
    ])
    def test_urls_are_joined_as_the_original_joined_them(self, url, listed, manifest):
        assert repositories.images_url(url) == listed
        assert repositories.manifest_url(url, UUID) == manifest


class TestVisibleRepositories:
    @pytest.mark.parametrize("server, name", [
        ("http://Img01.Example.com/", "_img01"),
        ("http://10.0.0.5", "_10.0.0.5"),
        ("https://[2001:db8::1]:8443/", "_2001-db8--1"),
        ("http://images.", "_images"),
    ])
    def test_the_local_repository_is_named_after_the_image_servers_short_host_name(self, server, name):
        assert repositories.local_repository(server) == (name, server)

    @pytest.mark.parametrize("server", ["", "not a url"])
    def test_no_image_server_no_local_repository(self, server):
        assert repositories.local_repository(server) is None

    def test_the_local_repository_is_for_superadmins_only_and_everything_is_sorted(self):
        configured = {"zeta": "https://z.test", "alpha": "https://a.test"}
        local = ("_img01", "http://10.0.0.5")
        assert list(repositories.visible(configured, local, is_superadmin=False)) == ["alpha", "zeta"]
        assert repositories.visible(configured, local, is_superadmin=True) == {
            "_img01": "http://10.0.0.5", "alpha": "https://a.test", "zeta": "https://z.test"}
        assert list(repositories.visible(configured, None, is_superadmin=True)) == ["alpha", "zeta"]

    def test_a_configured_repository_of_the_same_name_wins_over_the_local_one(self):
        assert repositories.visible({"_img01": "https://x.test"}, ("_img01", "http://10.0.0.5"),
                                    is_superadmin=True) == {"_img01": "https://x.test"}


class TestImageList:
    def test_a_json_list_of_manifests_is_accepted_and_entries_without_a_uuid_dropped(self):
        raw = orjson.dumps([{"uuid": UUID, "name": "a"}, {"name": "no uuid"}, "text", {"uuid": 5}])
        assert repositories.parse_image_list(raw) == [{"uuid": UUID, "name": "a"}]

    def test_undecodable_answers_have_the_originals_message(self):
        with pytest.raises(repositories.RepositoryError, match=r"^Image server response could not be decoded \("):
            repositories.parse_image_list(b"<html>")

    def test_a_non_list_has_the_originals_message(self):
        with pytest.raises(repositories.RepositoryError) as caught:
            repositories.parse_image_list(b'{"images": []}')
        assert str(caught.value) == "Unexpected output from image server (<class 'dict'>)"

    def test_newest_first_by_published_at_and_undated_last_in_their_order(self):
        entries = [
            {"uuid": "old", "published_at": "2019-01-01T00:00:00Z"},
            {"uuid": "undated-1"},
            {"uuid": "new", "published_at": "2021-06-01T12:00:00.123Z"},
            {"uuid": "garbage", "published_at": "yesterday"},
            {"uuid": "naive", "published_at": "2020-01-01T00:00:00"},
        ]
        ordered = [e["uuid"] for e in repositories.newest_first(entries)]
        assert ordered == ["new", "naive", "old", "undated-1", "garbage"]


class TestObjects:
    def test_image_object_is_derived_from_the_manifest_in_the_originals_key_order(self):
        manifest = {"uuid": UUID, "name": "centos-7", "version": "20200101", "type": "zvol", "os": "linux",
                    "description": "CentOS", "homepage": "https://centos.org", "image_size": 10240,
                    "state": "active", "published_at": "2020-01-02T10:11:12Z",
                    "files": [{"sha1": "x", "size": 402653184}]}
        shown = repositories.image_object(manifest, "https://repo.test/")
        assert list(shown) == ["manifest", "manifest_url", "uuid", "name", "version", "created", "ostype", "desc",
                               "homepage", "size", "state", "download_size"]
        assert shown == {
            "manifest": manifest, "manifest_url": f"https://repo.test/images/{UUID}", "uuid": UUID,
            "name": "centos-7", "version": "20200101", "created": "2020-01-02T10:11:12Z", "ostype": 1,
            "desc": "CentOS", "homepage": "https://centos.org", "size": 10240, "state": "active",
            "download_size": 402653184,
        }

    @pytest.mark.parametrize("manifest, ostype", [
        ({"type": "zone-dataset"}, 5), ({"type": "lx-dataset"}, 6), ({"type": "zvol", "os": "SmartOS"}, 2),
        ({"type": "zvol", "os": "windows"}, 4), ({"type": "zvol", "os": 7}, 1), ({}, 1),
    ])
    def test_ostype_maps_as_import_does_and_malformed_keys_read_as_absent(self, manifest, ostype):
        assert repositories.image_object({"uuid": UUID, **manifest}, "https://r.test/")["ostype"] == ostype

    def test_a_sparse_manifest_gets_the_originals_defaults(self):
        shown = repositories.image_object({"uuid": UUID, "files": []}, "https://r.test/")
        assert {k: shown[k] for k in ("name", "version", "created", "desc", "homepage", "size", "state",
                                      "download_size")} == {
            "name": "", "version": "", "created": "", "desc": "", "homepage": None, "size": 1024, "state": "",
            "download_size": 0}

    def test_repository_object_of_a_never_refreshed_repository(self):
        assert repositories.repository_object("r", "https://r.test", None) == {
            "name": "r", "url": "https://r.test", "last_update": None, "image_count": 0, "error": None}

    def test_a_stored_state_counts_only_for_the_url_it_was_fetched_from(self):
        when = datetime(2020, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
        record = RepositoryRecord("r", "https://old.test", when, 3, None, [{"uuid": UUID}])
        assert repositories.repository_object("r", "https://old.test", record) == {
            "name": "r", "url": "https://old.test", "last_update": "2020-01-02T03:04:05Z", "image_count": 3,
            "error": None}
        assert repositories.repository_object("r", "https://new.test", record)["image_count"] == 0
        assert repositories.current(record, "https://new.test") is None

    def test_a_failure_keeps_the_previous_refresh_and_records_the_error(self):
        when = datetime(2020, 1, 2, tzinfo=timezone.utc)
        previous = RepositoryRecord("r", "https://r.test", when, 3, None)
        failed = repositories.failed("r", "https://r.test", previous, "timed out")
        assert (failed.last_update, failed.image_count, failed.error) == (when, 3, "timed out")
        first = repositories.failed("r", "https://r.test", None, "timed out")
        assert (first.last_update, first.image_count, first.error) == (None, 0, "timed out")

    def test_a_refresh_counts_and_orders_the_list(self):
        now = datetime(2021, 1, 1, tzinfo=timezone.utc)
        state = repositories.refreshed("r", "https://r.test", now=now, images=[
            {"uuid": "a", "published_at": "2019-01-01T00:00:00Z"}, {"uuid": "b", "published_at": "2020-01-01T00:00:00Z"}])
        assert (state.image_count, state.error, [e["uuid"] for e in state.images]) == (2, None, ["b", "a"])
