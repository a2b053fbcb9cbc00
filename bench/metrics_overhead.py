"""What the Prometheus metrics cost the gateway: ``GET /api/image/<name>/`` latency with
``IMAGESVC_METRICS=on`` against a baseline with ``off``, measured in the same run.

Two ``imagesvc serve`` processes (the embedded mode: the gateway's code path over SQLite, the
same as the distributed gateway's up to the database driver) are started side by side, one with
metrics on and one off, each with one image imported from a loopback origin. Then rounds
alternate, on, off, on, off, ... each one client on one keep-alive connection sending ``--requests``
show requests one at a time after a warm-up; a ``/metrics`` scrape runs every second against the
"on" server while it is measured (as Prometheus would, from a process of its own). Printed: p50, p95, p99 and mean per mode
over all rounds, and the ratios on/off. The machine is shared: read the ratio, not the absolute
figures.

    .venv/bin/python bench/metrics_overhead.py [--rounds 4] [--requests 2000] [--no-scrape]
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from tests.support.origin import Origin  # noqa: E402
from tests.support.polling import eventually  # noqa: E402
from tests.support.systems import System, start_embedded  # noqa: E402

WARM_UP = 200
#: Prometheus's part: ``GET /metrics`` once a second on one keep-alive connection.
SCRAPER = """
import http.client, sys, time, urllib.parse
url = urllib.parse.urlsplit(sys.argv[1])
connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
while True:
    connection.request("GET", url.path)
    connection.getresponse().read()
    time.sleep(1.0)
"""


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def with_image(system: System, origin: Origin, name: str) -> None:
    url, _ = origin.add_manifest()
    with system.client() as client:
        answer = client.post(f"/image/{name}/", json={"manifest_url": url, "dc": "main"})
        assert answer.status_code in (200, 201), answer.text

        def shown() -> None:
            assert client.get(f"/image/{name}/").status_code == 200

        eventually(shown, timeout=30)


def measure(system: System, name: str, requests: int, *, scrape: bool) -> list[float]:
    """Seconds per show request, one at a time on one keep-alive connection."""
    address = httpx.URL(system.url)
    connection = http.client.HTTPConnection(address.host, address.port, timeout=30)
    headers = {"ES-API-KEY": system.api_key}
    path = f"/api/image/{name}/"
    scraper = None
    timings = []
    try:
        for index in range(WARM_UP + requests):
            if index == WARM_UP and scrape:
                # In a process of its own: a thread here would take the GIL from the measuring loop.
                scraper = subprocess.Popen([sys.executable, "-c", SCRAPER, system.url.removesuffix("/api") + "/metrics"])
            started = time.perf_counter()
            connection.request("GET", path, headers=headers)
            answer = connection.getresponse()
            answer.read()
            elapsed = time.perf_counter() - started
            assert answer.status == 200, answer.status
            if index >= WARM_UP:
                timings.append(elapsed)
    finally:
        if scraper is not None:
            scraper.kill()
            scraper.wait()
        connection.close()
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--no-scrape", action="store_true", help="no /metrics scrape while measuring")
    parser.add_argument("--json", metavar="PATH", default=None, help="write the result there (bench/all reads it)")
    args = parser.parse_args()
    origin = Origin()
    systems: dict[str, System] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="imagesvc-bench-metrics-") as scratch:
            for mode in ("on", "off"):
                workdir = Path(scratch) / mode
                workdir.mkdir()
                systems[mode] = start_embedded(workdir, {"IMAGESVC_METRICS": mode, "IMAGESVC_LOG_LEVEL": "WARNING"})
                with_image(systems[mode], origin, "bench-image")
            on = systems["on"].url.removesuffix("/api") + "/metrics"
            off = systems["off"].url.removesuffix("/api") + "/metrics"
            assert httpx.get(on, timeout=10).status_code == 200 and httpx.get(off, timeout=10).status_code == 404
            timings: dict[str, list[float]] = {"on": [], "off": []}
            for round_ in range(args.rounds):
                for mode in ("on", "off") if round_ % 2 == 0 else ("off", "on"):
                    timings[mode] += measure(systems[mode], "bench-image", args.requests, scrape=mode == "on" and not args.no_scrape)
            rows = []
            for label, figure in (("p50", lambda t: percentile(t, 0.50)), ("p95", lambda t: percentile(t, 0.95)),
                                  ("p99", lambda t: percentile(t, 0.99)), ("mean", statistics.fmean)):
                with_metrics, without = figure(timings["on"]), figure(timings["off"])
                rows.append((label, with_metrics * 1000, without * 1000, with_metrics / without))
            print(f"show request latency, {args.rounds} alternating rounds of {args.requests} requests per mode"
                  f"{' (no scrape)' if args.no_scrape else ', /metrics scraped every second'}")
            print(f"{'':6}{'metrics on':>12}{'metrics off':>13}{'ratio':>8}")
            for label, with_metrics, without, ratio in rows:
                print(f"{label:6}{with_metrics:>9.3f} ms{without:>10.3f} ms{ratio:>8.3f}")
            if args.json:
                from report import figure, write_json

                # imagesvc: metrics on; baseline: the same server with metrics off (no target: read the ratio).
                write_json("metrics_overhead", args,
                           [figure(f"show {label}, ms, metrics on vs off", with_metrics, without, ratio)
                            for label, with_metrics, without, ratio in rows],
                           {"requests_per_mode": len(timings["on"]), "scrape": not args.no_scrape},
                           path=args.json)
    finally:
        for system in systems.values():
            system.stop()
        origin.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
