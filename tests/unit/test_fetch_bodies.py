"""The fetcher against a real loopback origin (reliability plan S5, S7): compressed bodies are
never decoded, and the size cap holds whatever the headers say."""

from __future__ import annotations

import gzip

import pytest

from imagesvc.shared.net.fetch import FetchError, Fetcher, UrlPolicy

BOMB = gzip.compress(b"\0" * (8 * 1024 * 1024))  # 8 MiB of zeros in a few KiB


@pytest.fixture
def fetcher() -> Fetcher:
    return Fetcher(UrlPolicy(["127.0.0.1"]))


@pytest.mark.parametrize("encoding", ["gzip", "gzip, gzip, gzip, gzip, gzip, gzip", "deflate", "br"])
def test_an_encoded_body_is_refused_not_decoded(origin, fetcher, encoding):
    url = origin.route("/bomb", BOMB, headers={"Content-Encoding": encoding})
    received = []
    for fetch in (lambda: fetcher.get(url, max_bytes=1 << 20, timeout=5),
                  lambda: fetcher.download(url, received.append, max_bytes=1 << 30, connect_timeout=5,
                                           idle_timeout=5, total_timeout=10)):
        with pytest.raises(FetchError) as caught:
            fetch()
        assert caught.value.code == "encoding_not_allowed"
    assert received == []


def test_a_redirect_whose_body_is_a_bomb_is_followed_without_reading_it(origin, fetcher):
    target = origin.route("/plain", b"fine")
    url = origin.route("/moved", BOMB, status=302, headers={"Location": target, "Content-Encoding": "gzip"})
    assert fetcher.get(url, max_bytes=1024, timeout=5) == b"fine"


def test_a_declared_length_above_the_cap_is_refused_before_the_body(origin, fetcher):
    url = origin.route("/big", b"x" * 4096)
    received = []
    with pytest.raises(FetchError) as caught:
        fetcher.download(url, received.append, max_bytes=1024, connect_timeout=5, idle_timeout=5, total_timeout=10)
    assert caught.value.code == "too_large" and received == []


def test_a_body_longer_than_the_cap_is_cut_at_the_cap(origin, fetcher):
    url = origin.route("/long", b"y" * 10_000, headers={"Content-Length": "100"})  # lies about its length
    received = []
    try:
        fetcher.download(url, received.append, max_bytes=100, connect_timeout=5, idle_timeout=5, total_timeout=10)
    except FetchError as exc:
        assert exc.code in ("too_large", "connection_error")
    assert sum(len(chunk) for chunk in received) <= 100


def test_a_download_asks_the_socket_for_a_chunk_at_a_time_not_for_64_kib(origin, fetcher, monkeypatch):
    """httpcore's 64 KiB reads cost four times the CPU per byte of 1 MiB reads (the importer's hot
    loop); the fetcher raises the read size, and this catches an httpcore that stops honouring it."""
    from httpcore._backends.sync import SyncStream

    asked: list[int] = []
    real_read = SyncStream.read

    def recording(self, max_bytes, timeout=None):
        asked.append(max_bytes)
        return real_read(self, max_bytes, timeout)

    monkeypatch.setattr(SyncStream, "read", recording)
    body = bytes(range(256)) * 16384  # 4 MiB
    received = []
    fetcher.download(origin.route("/file", body), received.append, max_bytes=len(body), connect_timeout=5,
                     idle_timeout=5, total_timeout=10)
    assert b"".join(received) == body
    assert asked and min(asked) >= 1 << 20
