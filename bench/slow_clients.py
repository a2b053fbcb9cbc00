"""imagesvc HTTP edge benchmark: the latency of a normal show while thousands of slow clients hold
connections, and while hundreds of anonymous logins hash passwords, next to the same show
without them, in the same run.

    .venv/bin/python bench/slow_clients.py [--slow 5000] [--logins 200] [--seconds 15] [--rounds 2]

``imagesvc serve`` with its defaults (tests/support/systems.py ``start_embedded``) except
``IMAGESVC_LOGIN_THROTTLE=off`` (an attacker with many addresses gets past the throttle, so the
hashing pool is what must hold), and one image imported from a loopback origin. Rounds alternate:
*quiet* (nothing else), *slow clients* (``--slow`` connections each sending a request head
slowly, a header line a second, never its end, every closed one reopened at once:
tests/support/slow_clients.py) and *logins* (``--logins`` threads each posting a login with a
wrong password in a loop, waiting out a 429's ``Retry-After``). The load runs in a child process so that its Python work does not slow
the measuring process. In each round ``GET /api/image/<name>/`` is timed every 50 ms on a new
connection for ``--seconds``. The table shows the best round of each side (lowest p99) and the
ratios to the quiet side. No broker, no database server. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from tests.support.origin import Origin  # noqa: E402
from tests.support.slow_clients import Prober, SlowClients  # noqa: E402
from tests.support.systems import start_embedded  # noqa: E402


def log(message: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", flush=True)


def attack(port: int, count: int, ready, stop, report) -> None:
    """(Child process.) Hold ``count`` slow connections until ``stop``; report what was answered."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    slow = SlowClients("127.0.0.1", port, count, reopen=True).start()
    while slow.opened < count and not stop.is_set():
        time.sleep(0.1)  # polling the ramp-up
    ready.set()
    stop.wait()
    slow.stop()
    report.put({"answers": {str(k): v for k, v in slow.answers.items()}, "connections": slow.opened,
                "failed_connects": slow.failed_connects})


def login_flood(base_url: str, count: int, ready, stop, report) -> None:
    """(Child process.) ``count`` threads posting wrong logins until ``stop``, each waiting out a
    429's ``Retry-After`` (what is measured is the hashing, not a flood of refused requests);
    report the answers."""
    from collections import Counter
    from concurrent.futures import ThreadPoolExecutor

    answers: Counter = Counter()

    def loop(index: int) -> None:
        with httpx.Client(base_url=base_url, timeout=60) as client:
            while not stop.is_set():
                answer = client.post("/accounts/login/", json={"username": f"bench-{index}", "password": "wrong"})
                answers[answer.status_code] += 1
                if answer.status_code == 429:
                    stop.wait(float(answer.headers["retry-after"]))

    with ThreadPoolExecutor(count) as pool:
        for index in range(count):
            pool.submit(loop, index)
        ready.set()
    report.put({"answers": {str(k): v for k, v in answers.items()}})


def measure(url: str, key: str, seconds: float) -> list[float]:
    prober = Prober(url, headers={"ES-API-KEY": key}, interval=0.05).start()
    time.sleep(seconds)  # the measuring window
    prober.stop()
    bad = {status for _, status in prober.samples if status != 200}
    if bad:
        raise SystemExit(f"a show was not answered 200: {bad}")
    return prober.latencies()


def stats(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000, 2)

    return {"n": len(ordered), "p50_ms": at(0.50), "p95_ms": at(0.95), "p99_ms": at(0.99),
            "max_ms": round(ordered[-1] * 1000, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", type=int, default=5000, help="slow connections held during slow-client rounds")
    parser.add_argument("--logins", type=int, default=200, help="parallel login loops during login rounds")
    parser.add_argument("--seconds", type=float, default=15.0, help="measuring window of each round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each side")
    parser.add_argument("--json", metavar="PATH", default=None,
                        help="write the result there (default: bench/results/slow-clients-<timestamp>.json)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="imagesvc-bench-edge-"))
    origin = Origin()
    system = start_embedded(workdir, {"IMAGESVC_LOGIN_THROTTLE": "off"})
    context = multiprocessing.get_context("spawn")
    sides = {"slow clients": (attack, f"{args.slow} slow clients"), "logins": (login_flood, f"{args.logins} logins")}
    rounds: dict[str, list[dict]] = {"quiet": [], "slow clients": [], "logins": []}
    try:
        manifest_url, _ = origin.add_manifest()
        with system.client() as client:
            assert client.post("/image/bench-show/", json={"manifest_url": manifest_url, "dc": "main"}).status_code == 200
        url = f"{system.url}/image/bench-show/"
        load_args = {"slow clients": (httpx.URL(system.url).port, args.slow), "logins": (system.url, args.logins)}
        measure(url, system.api_key, 2)  # warm-up
        for number in range(1, args.rounds + 1):
            log(f"round {number}: quiet")
            rounds["quiet"].append(stats(measure(url, system.api_key, args.seconds)))
            for side, (load, title) in sides.items():
                log(f"round {number}: {title}")
                ready, stop, report = context.Event(), context.Event(), context.Queue()
                child = context.Process(target=load, args=(*load_args[side], ready, stop, report))
                child.start()
                if not ready.wait(120):
                    raise SystemExit(f"{title}: the load did not start")
                figures = stats(measure(url, system.api_key, args.seconds))
                stop.set()
                figures["load"] = report.get(timeout=120)
                child.join(timeout=60)
                rounds[side].append(figures)
                log(json.dumps(figures))
    finally:
        system.stop()
        origin.close()

    best = {side: min(results, key=lambda r: r["p99_ms"]) for side, results in rounds.items()}
    quiet = best["quiet"]
    print(f"\nGET /api/image/<name>/ on a new connection every 50 ms, {args.seconds:g} s per round, best of "
          f"{args.rounds} (lowest p99)\n")
    print(f"| figure | quiet | {sides['slow clients'][1]} | ratio | {sides['logins'][1]} | ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in ("p50_ms", "p95_ms", "p99_ms", "max_ms"):
        cells = [f"{best[side][name]} | {best[side][name] / quiet[name]:.2f}" for side in sides]
        print(f"| {name} | {quiet[name]} | {' | '.join(cells)} |")
    for side in sides:
        print(f"\n{side} (best round): {best[side]['load']}")
    from report import figure, write_json

    # imagesvc: the show under each load; baseline: the same show in the quiet rounds (no target).
    figures = [figure(f"show {name.removesuffix('_ms')}, ms, {title} vs quiet", best[side][name], quiet[name],
                      best[side][name] / quiet[name])
               for side, (_, title) in sides.items() for name in ("p50_ms", "p95_ms", "p99_ms", "max_ms")]
    write_json("slow_clients", args, figures, {"rounds": rounds, "best": best}, path=args.json, kind="slow-clients")
    return 0


if __name__ == "__main__":
    sys.exit(main())
