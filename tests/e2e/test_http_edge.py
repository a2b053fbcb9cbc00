"""The HTTP edge against the real servers, over real sockets (reliability row T6 and the rest of
imagesvc/edge.py's promises): ``imagesvc serve`` with its defaults, ``imagesvc image-server``,
and ``imagesvc gateway --workers 2``.

T6 (slow_and_oversized_clients): while a normal show (``GET /api/image/<name>/``) is timed every
0.1 s on a new connection, ``imagesvc serve`` gets a 64 KiB and a 64 MiB header, then 5,000
connections sending partial heads slowly (each closed one reopened, nightly for longer), then 200
parallel logins with wrong passwords from one address, each with another ``X-Forwarded-For``.
Every show answers within 1 s; the headers get 431 while the gateway's peak RSS grows by less
than 32 MiB; the slow connections are answered 408 at the head deadline or 503 when evicted at
the connection cap; the logins are throttled (429) after 10 failures, whatever X-Forwarded-For
says.
"""

from __future__ import annotations

import json
import re
import resource
import socket
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support.polling import eventually
from tests.support.raw_http import exchange, read_answer
from tests.support.slow_clients import Prober, SlowClients
from tests.support.systems import System, start_embedded, start_gateway, start_image_server
from tests.support.tier import scaled

pytestmark = pytest.mark.e2e

SLOW_CLIENTS = 5000
ATTACK_SECONDS = scaled(ci=10.0, nightly=60.0)
HEAD_TIMEOUT, CONNECTION_CAP, LOGIN_LIMIT = 10.0, 4096, 10  # the defaults (shared/config.py)
THROTTLED = re.compile(r"^Request was throttled\. Expected available in (\d+) seconds\.$")


@pytest.fixture(scope="module")
def serve(tmp_path_factory):
    started = start_embedded(tmp_path_factory.mktemp("edge"))
    yield started
    started.stop()


@pytest.fixture(scope="module")
def shown(serve, origin) -> str:
    """An image to show: its URL."""
    manifest_url, _ = origin.add_manifest()
    with serve.client() as client:
        assert client.post("/image/t6-shown/", json={"manifest_url": manifest_url, "dc": "main"}).status_code == 200
    return f"{serve.url}/image/t6-shown/"


def _port(system: System) -> int:
    return httpx.URL(system.url).port


def _memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


def _open_files(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def _send_head(port: int, head: bytes, *, value_bytes: int, piece: int = 65536) -> tuple[int, dict, bytes]:
    """Send ``head`` and then a header value of ``value_bytes`` in pieces; the server's answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head + b"X-Big: ")
        try:
            for _ in range(value_bytes // piece):
                sock.sendall(b"a" * piece)
            sock.sendall(b"\r\n\r\n")
        except OSError:
            pass  # refused mid-header: the answer was sent first
        return read_answer(sock)


def test_t6_slow_and_oversized_clients(serve, shown):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < SLOW_CLIENTS + 1000:  # this process holds the 5,000 client sockets
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, SLOW_CLIENTS + 4000), hard))
    pid, port = serve.processes["serve"].pid, _port(serve)
    prober = Prober(shown, headers={"ES-API-KEY": serve.api_key}).start()
    figures: dict[str, object] = {}
    try:
        eventually(lambda: _at_least(len(prober.samples), 20))  # ~2 s of baseline

        # --- oversized headers: 431 at once, memory bounded --------------------------------------
        before = _memory(pid)
        head = f"GET {httpx.URL(shown).path} HTTP/1.1\r\nHost: 127.0.0.1\r\nES-API-KEY: {serve.api_key}\r\n".encode()
        for size in (64 * 1024, 64 * 1024 * 1024):
            status, headers, body = _send_head(port, head, value_bytes=size)
            assert status == 431 and headers["content-type"] == "application/json", (size, status, body)
            assert json.loads(body) == {"detail": "Request headers are larger than 16384 bytes."}
        after = _memory(pid)
        figures["rss_peak_growth_mib"] = round((after["VmHWM"] - before["VmHWM"]) / 2**20, 1)
        assert after["VmHWM"] - before["VmHWM"] < 32 * 2**20, (before, after)

        # --- 5,000 slow connections: first a fixed set, then an attacker reopening what is closed --
        mark = len(prober.samples)
        slow = SlowClients("127.0.0.1", port, SLOW_CLIENTS, reopen=False).start()
        try:
            eventually(lambda: _at_least(slow.opened, SLOW_CLIENTS), timeout=60)
            figures["peak_server_files"] = _peak_open_files(pid, until=lambda: slow.open_now == 0,
                                                            timeout=HEAD_TIMEOUT + 10)
        finally:
            slow.stop()
        figures.update(fixed_set=dict(slow.answers), fixed_set_first_answer_s=slow.first_answer_after)
        # Beyond the cap the longest-waiting were evicted (503), the rest cut off at the deadline (408).
        assert slow.answers[503] >= SLOW_CLIENTS - CONNECTION_CAP and slow.answers[408] > 0, figures
        assert slow.answers[503] + slow.answers[408] == SLOW_CLIENTS, figures
        assert HEAD_TIMEOUT * 0.9 <= slow.first_answer_after[408] < HEAD_TIMEOUT + 5, figures
        attacker = SlowClients("127.0.0.1", port, SLOW_CLIENTS, reopen=True).start()
        try:
            eventually(lambda: _at_least(attacker.opened, SLOW_CLIENTS), timeout=60)
            peak = _peak_open_files(pid, until=lambda: False, timeout=ATTACK_SECONDS)
        finally:
            attacker.stop()
        figures.update(attacker=dict(attacker.answers), attacker_connections=attacker.opened,
                       peak_server_files=max(figures["peak_server_files"], peak))
        # The cap holds (with the server's own files, and a few evictions in flight).
        assert figures["peak_server_files"] <= CONNECTION_CAP + 256 + 64, figures
        assert attacker.answers[503] > 0 and attacker.failed_connects == 0, figures
        figures["show_during_slow_clients"] = _summary(prober.latencies(mark))

        # --- 200 parallel failed logins, one address, varying X-Forwarded-For ---------------------
        mark = len(prober.samples)

        logins = httpx.Client(base_url=serve.url, timeout=60, limits=httpx.Limits(max_connections=200))

        def login(index: int) -> httpx.Response:
            return logins.post("/accounts/login/", json={"username": f"t6-user-{index}", "password": "wrong"},
                               headers={"X-Forwarded-For": f"10.{index // 250}.{index % 250}.1"})

        with logins, ThreadPoolExecutor(200) as pool:
            answers = list(pool.map(login, range(200)))
            again = login(999)  # yet another forwarded address: still the same client
        codes = Counter(a.status_code for a in answers)
        figures["logins"] = dict(codes)
        assert set(codes) == {400, 429} and codes[400] <= LOGIN_LIMIT, codes
        for answer in answers:
            if answer.status_code == 429:
                match = THROTTLED.match(answer.json()["detail"])
                assert match and answer.headers["retry-after"] == match.group(1)
        assert again.status_code == 429
        figures["show_during_logins"] = _summary(prober.latencies(mark))
    finally:
        prober.stop()
    figures["show_overall"] = _summary(prober.latencies())
    print("\nT6 figures:", json.dumps(figures))
    assert serve.processes["serve"].poll() is None
    failures = {status: n for status, n in prober.statuses().items() if status != 200}
    assert not failures, (failures, figures)
    assert max(prober.latencies()) < 1.0, figures
    assert "Traceback" not in serve.log("serve")


def _peak_open_files(pid: int, *, until, timeout: float) -> int:
    """The most files ``pid`` had open, sampled every 0.5 s until ``until()`` or ``timeout``."""
    peak, deadline = 0, time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:
        peak = max(peak, _open_files(pid))
        time.sleep(0.5)  # a sampling interval, not a wait for something to happen
    return peak


def _at_least(value: int, minimum: int) -> None:
    assert value >= minimum, (value, minimum)


def _summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {"n": len(ordered), "median_ms": round(ordered[len(ordered) // 2] * 1000, 1),
            "p99_ms": round(ordered[int(len(ordered) * 0.99)] * 1000, 1), "max_ms": round(ordered[-1] * 1000, 1)}


# --- the rest of the edge, over real sockets ----------------------------------------------------


def test_over_long_numbers_and_empty_path_segments_are_answered_at_once_by_the_server(serve, shown):
    digits = "9" * 5000
    with serve.client() as client:
        update = client.put(shown, json={"access": digits})
        assert update.status_code == 400 and update.json()["result"] == {"access": ["Enter a whole number."]}
        assert client.put(shown, json={"desc": "x"}, headers={"If-Match": f'"v{digits}"'}).status_code == 412
        indented = client.get(shown, headers={"Accept": f"application/json; indent={digits}"})
        assert indented.status_code == 200 and indented.text.startswith('{\n        "task_id"')
        for path in ("/api//image/", "/api/image//", "/api/openapi.json/"):
            answer = client.get(httpx.URL(serve.url).join(path), headers={"Host": "evil.example"},
                                follow_redirects=False)
            assert answer.status_code == 404 and answer.json() == {"detail": "Not found."}, path
    assert "Traceback" not in serve.log("serve")


@pytest.fixture(scope="module")
def behind_a_proxy(tmp_path_factory):
    """``imagesvc serve`` that believes 127.0.0.1's X-Forwarded-For, and answers commands 201 at once."""
    started = start_embedded(tmp_path_factory.mktemp("proxied"), {"IMAGESVC_TRUSTED_PROXIES": "127.0.0.1",
                                                                 "IMAGESVC_ANSWER_WINDOW": "0"})
    yield started
    started.stop()


def test_x_forwarded_for_is_believed_from_a_configured_proxy_only(behind_a_proxy):
    def login(system: System, forwarded: str, user: str) -> int:
        return httpx.post(f"{system.url}/accounts/login/", json={"username": user, "password": "wrong"},
                          headers={"X-Forwarded-For": forwarded}, timeout=30).status_code

    # Behind the configured proxy each forwarded address is a client of its own...
    assert [login(behind_a_proxy, f"192.0.2.{i}", f"p-user-{i}") for i in range(LOGIN_LIMIT + 2)] == \
        [400] * (LOGIN_LIMIT + 2)
    # ...and one of them is throttled like any client.
    assert [login(behind_a_proxy, "198.51.100.7", f"q-user-{i}") for i in range(LOGIN_LIMIT + 1)] == \
        [400] * LOGIN_LIMIT + [429]


def test_a_client_hanging_up_is_logged_at_info_without_a_traceback(behind_a_proxy, origin):
    port = _port(behind_a_proxy)
    manifest_url, _ = origin.add_manifest(delay=3)  # the import runs for a while
    body = json.dumps({"manifest_url": manifest_url, "dc": "main"}).encode()
    key = behind_a_proxy.api_key.encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /api/image/hangs-up/ HTTP/1.1\r\nHost: t\r\nES-API-KEY: " + key +
                     b"\r\nES-STREAM: es\r\nContent-Type: application/json\r\nContent-Length: " +
                     str(len(body)).encode() + b"\r\n\r\n" + body)
        started = sock.recv(65536)
    # The streamed answer had begun: 201, with where to read the task (never built from Host).
    assert started.startswith(b"HTTP/1.1 201")
    assert re.search(rb"\r\nlocation: /api/task/[^/\r]+/status/\r\n", started)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"PUT /api/image/hangs-up/ HTTP/1.1\r\nHost: t\r\nES-API-KEY: " + key +
                     b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"de")
        # and hangs up with 96 bytes of its body unsent

    def logged() -> list[dict]:
        lines = [json.loads(line) for line in behind_a_proxy.log("serve").splitlines()
                 if line.startswith("{") and '"request.client_gone"' in line]
        assert len(lines) == 2, lines
        return lines

    gone = eventually(logged, timeout=30)
    assert {(g["method"], g["during"], g["level"]) for g in gone} == {("POST", "response", "info"),
                                                                      ("PUT", "request", "info")}
    log = behind_a_proxy.log("serve")
    assert '"status":499' in log and "Traceback" not in log and '"level":"error"' not in log


@pytest.fixture
def image_store(tmp_path) -> tuple[Path, str]:
    from imagesvc.shared.store import LocalStore

    root = tmp_path / "images"
    store = LocalStore(str(root))
    uuid = "6f5d6e2a-3a4b-4c5d-8e9f-0a1b2c3d4e5f"
    upload = store.upload(uuid, "edge")
    upload.write(b"x" * 1000)
    upload.commit()
    store.write_manifest(uuid, {"uuid": uuid, "name": "edge", "version": "1"})
    return root, uuid


def test_the_image_server_holds_its_edge_too(tmp_path, image_store):
    root, uuid = image_store
    server = start_image_server(tmp_path, root, {"IMAGESVC_HEADER_TIMEOUT": "1", "IMAGESVC_MAX_CONNECTIONS": "50"})
    port = _port(server)
    try:
        started = time.monotonic()
        status, _, body = exchange(port, b"GET /ping HTTP/1.1\r\nHost: t\r\n")  # and never the rest
        assert status == 408 and time.monotonic() - started < 1 + 5
        assert json.loads(body) == {"code": "RequestTimeout", "message": "Request headers were not received in time."}
        status, _, body = exchange(port, b"GET /ping HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n")
        assert status == 431 and json.loads(body)["code"] == "RequestHeaderFieldsTooLarge"
        digits = "9" * 5000
        with httpx.Client(base_url=server.url, timeout=30) as client:
            whole = client.get(f"/images/{uuid}/file", headers={"Range": f"bytes={digits}-"})
            assert whole.status_code == 416 and whole.headers["content-range"] == "bytes */1000"
            clipped = client.get(f"/images/{uuid}/file", headers={"Range": f"bytes=990-{digits}"})
            assert clipped.status_code == 206 and clipped.headers["content-range"] == "bytes 990-999/1000"
        slow = SlowClients("127.0.0.1", port, 60, reopen=True, path="/ping").start()
        try:
            eventually(lambda: _at_least(slow.opened, 60))
            with httpx.Client(base_url=server.url, timeout=30) as client:
                for _ in range(10):  # each a new connection at the cap, evicting a slow one
                    assert client.get("/ping", headers={"Connection": "close"}).json() == {"ping": "pong"}
        finally:
            slow.stop()
        assert slow.answers[503] >= 10
        assert "Traceback" not in server.log("image-server")
    finally:
        server.stop()


def test_every_gateway_worker_process_holds_the_edge(tmp_path):
    gateway = start_gateway(tmp_path, workers=2, extra_env={"IMAGESVC_HEADER_TIMEOUT": "1"})
    port = _port(gateway)
    try:
        # Several connections, spread over both workers by the kernel: each one's edge answers.
        for _ in range(4):
            status, _, body = exchange(port, b"GET /api/openapi.json HTTP/1.1\r\nHost: t\r\n")
            assert status == 408 and json.loads(body) == {"detail": "Request headers were not received in time."}
        status, _, _ = exchange(port, b"GET /api/openapi.json HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n")
        assert status == 431
    finally:
        gateway.stop()
