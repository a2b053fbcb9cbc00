"""imagesvc under a hostile load: the latency of a normal show and of a normal import while N slow
clients hold connections and M imports by another user wait on slow origins, next to the same
figures without them, in the same run.

    .venv/bin/python bench/hostile_load.py [--slow 2000] [--origins 9] [--seconds 30] [--rounds 2]

``imagesvc serve`` with an image store and its defaults (the fetch deadline
``IMAGESVC_FETCH_TIMEOUT`` 5 s, each user's share of the importer ``IMAGESVC_LONG_COMMANDS_PER_USER``
half its threads, the HTTP edge's deadlines and connection cap). Rounds alternate: *quiet* and
*hostile*. A hostile round runs, in a child process: ``--slow`` connections sending a request head
slowly (a header line a second, never its end, every closed one reopened: tests/support/slow_clients.py)
and ``--origins`` imports by the user ``attacker`` whose origin sends its response headers a byte
every 4 s (each posted again as soon as it fails, so that ``--origins`` keep waiting). In every
round the measuring process times ``GET /api/image/<name>/`` every 50 ms on a new connection, and
one import at a time by the user ``normal`` of a 1 MiB image from a prompt origin, from the POST to
its task's SUCCESS. The table shows each side's best round (lowest p99 of the show) and the
ratios hostile / quiet. No broker, no database server. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from slow_clients import log, stats  # noqa: E402  (the sibling benchmark)
from tests.support.origin import Origin  # noqa: E402
from tests.support.slow_clients import Prober, SlowClients  # noqa: E402
from tests.support.systems import start_embedded  # noqa: E402

TRICKLE = 4.0  # seconds between two bytes of a slow origin's response head


def hostile(port: int, slow: int, origins: int, key: str, ready, stop, report) -> None:
    """(Child process.) ``slow`` slow clients and ``origins`` imports waiting on slow origins,
    until ``stop``; report what they got."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    clients = SlowClients("127.0.0.1", port, slow, reopen=True).start()
    origin = Origin()
    outcomes: dict[str, int] = {}
    base = f"http://127.0.0.1:{port}/api"

    def keep_one_waiting() -> None:
        with httpx.Client(base_url=base, headers={"ES-API-KEY": key}, timeout=60) as client:
            while not stop.is_set():
                url, manifest = origin.add_manifest()
                origin.routes[f"/images/{manifest['uuid']}"].trickle = TRICKLE
                answer = client.post(f"/image/slow-{uuid.uuid4().hex[:8]}/", json={"manifest_url": url, "dc": "main"})
                task = answer.json().get("task_id")
                while not stop.is_set() and task:
                    status = client.get(f"/task/{task}/status/").json()
                    if status["status"] not in ("PENDING", "STARTED"):
                        code = (status.get("result") or {}).get("code", status["status"]) if isinstance(
                            status.get("result"), dict) else status["status"]
                        outcomes[code] = outcomes.get(code, 0) + 1
                        break
                    stop.wait(0.5)

    threads = [threading.Thread(target=keep_one_waiting, daemon=True) for _ in range(origins)]
    for thread in threads:
        thread.start()
    while clients.opened < slow and not stop.is_set():
        time.sleep(0.1)  # polling the ramp-up
    ready.set()
    stop.wait()
    clients.stop()
    for thread in threads:
        thread.join(timeout=30)
    origin.close()
    report.put({"slow clients answered": {str(k): v for k, v in clients.answers.items()},
                "slow imports ended": outcomes})


def time_imports(base_url: str, key: str, origin: Origin, stop: threading.Event, results: list[float]) -> None:
    """One import at a time by the user ``normal``, timed from its POST to its task's SUCCESS."""
    content = os.urandom(1024 * 1024)
    with httpx.Client(base_url=base_url, headers={"ES-API-KEY": key}, timeout=120) as client:
        while not stop.is_set():
            url, _ = origin.add_image(content)
            started = time.perf_counter()
            answer = client.post(f"/image/norm-{uuid.uuid4().hex[:8]}/", json={"manifest_url": url, "dc": "main"})
            task = answer.json()["task_id"]
            while (status := client.get(f"/task/{task}/status/").json())["status"] in ("PENDING", "STARTED"):
                time.sleep(0.02)  # polling the task, as a client does
            if status["status"] != "SUCCESS":
                raise SystemExit(f"a normal import failed: {status}")
            results.append(time.perf_counter() - started)


def measure(system, keys: dict[str, str], origin: Origin, show_url: str, seconds: float) -> dict:
    prober = Prober(show_url, headers={"ES-API-KEY": keys["admin"]}, interval=0.05).start()
    imports: list[float] = []
    stop = threading.Event()
    importer = threading.Thread(target=time_imports, args=(system.url, keys["normal"], origin, stop, imports))
    importer.start()
    time.sleep(seconds)  # the measuring window
    stop.set()
    importer.join(timeout=180)
    prober.stop()
    bad = {status for _, status in prober.samples if status != 200}
    if bad:
        raise SystemExit(f"a show was not answered 200: {bad}")
    return {"show": stats(prober.latencies()), "import": stats(imports)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", type=int, default=2000, help="slow client connections held in hostile rounds")
    parser.add_argument("--origins", type=int, default=9, help="imports kept waiting on slow origins")
    parser.add_argument("--seconds", type=float, default=30.0, help="measuring window of each round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each side")
    parser.add_argument("--json", metavar="PATH", default=None,
                        help="write the result there (default: bench/results/hostile-load-<timestamp>.json)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="imagesvc-bench-hostile-"))
    origin = Origin()
    system = start_embedded(workdir, {"IMAGESVC_IMAGE_STORE": str(workdir / "store")})
    keys = {"admin": system.api_key}
    for user in ("normal", "attacker"):
        keys[user] = system.admin("user", "create", user, "--superadmin").strip().splitlines()[-1]
    context = multiprocessing.get_context("spawn")
    rounds: dict[str, list[dict]] = {"quiet": [], "hostile": []}
    title = f"{args.slow} slow clients + {args.origins} slow origins"
    try:
        manifest_url, _ = origin.add_image(b"\x00" * 4096)
        with system.client() as client:
            task = client.post("/image/bench-show/", json={"manifest_url": manifest_url, "dc": "main"}).json()["task_id"]
            while client.get(f"/task/{task}/status/").json()["status"] != "SUCCESS":
                time.sleep(0.05)  # polling the import
        show_url = f"{system.url}/image/bench-show/"
        port = httpx.URL(system.url).port
        measure(system, keys, origin, show_url, 3)  # warm-up
        for number in range(1, args.rounds + 1):
            log(f"round {number}: quiet")
            rounds["quiet"].append(measure(system, keys, origin, show_url, args.seconds))
            log(json.dumps(rounds["quiet"][-1]))
            log(f"round {number}: {title}")
            ready, stop, report = context.Event(), context.Event(), context.Queue()
            child = context.Process(target=hostile, args=(port, args.slow, args.origins, keys["attacker"], ready,
                                                          stop, report))
            child.start()
            if not ready.wait(120):
                raise SystemExit("the hostile load did not start")
            figures = measure(system, keys, origin, show_url, args.seconds)
            stop.set()
            figures["load"] = report.get(timeout=180)
            child.join(timeout=60)
            rounds["hostile"].append(figures)
            log(json.dumps(figures))
    finally:
        system.stop()
        origin.close()

    best = {side: min(results, key=lambda r: r["show"]["p99_ms"]) for side, results in rounds.items()}
    quiet, loaded = best["quiet"], best["hostile"]
    print(f"\n{args.seconds:g} s per round, best of {args.rounds} (lowest show p99); "
          "show: a new connection every 50 ms; import: 1 MiB, one at a time, POST to SUCCESS\n")
    print(f"| figure | quiet | {title} | ratio |")
    print("| --- | --- | --- | --- |")
    for what in ("show", "import"):
        for name in ("n", "p50_ms", "p95_ms", "p99_ms", "max_ms"):
            ratio = "" if name == "n" else f"{loaded[what][name] / quiet[what][name]:.2f}"
            print(f"| {what} {name} | {quiet[what][name]} | {loaded[what][name]} | {ratio} |")
    print(f"\nhostile load (best round): {loaded['load']}")
    from report import figure, write_json

    # imagesvc: under the hostile load; baseline: the quiet rounds (no target: read the ratios).
    figures = [figure(f"{what} {name.removesuffix('_ms')}, ms, hostile vs quiet", loaded[what][name],
                      quiet[what][name], loaded[what][name] / quiet[what][name])
               for what in ("show", "import") for name in ("p50_ms", "p95_ms", "p99_ms", "max_ms")]
    figures.append(figure("imports done in the round, hostile vs quiet", loaded["import"]["n"], quiet["import"]["n"],
                          loaded["import"]["n"] / quiet["import"]["n"] if quiet["import"]["n"] else None))
    write_json("hostile_load", args, figures, {"title": title, "rounds": rounds, "best": best}, path=args.json,
               kind="hostile-load")
    return 0


if __name__ == "__main__":
    sys.exit(main())
