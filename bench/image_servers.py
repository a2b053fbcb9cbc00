"""Image servers scale out: what two ``imagesvc image-server`` processes over one store serve,
next to one, in the same run, over the same store, with the same clients.

    .venv/bin/python bench/image_servers.py [--connections 32] [--seconds 8] [--rounds 3]
        [--small-kib 4] [--large-mib 64] [--range-kib 64] [--workloads small,range,large]

One store directory holding two images written through the store's own interface (``open_store``:
a small one of ``--small-kib`` and a large one of ``--large-mib``, random bytes), and two image
servers over it (tests/support/systems.py ``start_image_server``: ``imagesvc image-server`` with
its defaults, each its own process on its own port). Before measuring, each file is fetched
through each server and must equal the bytes written, with the same Content-MD5 (this also fills
the store's MD5 cache, as a first download does in production); then ``--warmup`` seconds of each
workload on both servers, not counted.

Workloads: *small* (``GET /images/<uuid>/file`` of the small image: per-request work of the
server dominates), *range* (``Range: bytes=...`` of ``--range-kib`` from the middle of the large
image: a resumed or parallel download), *large* (the whole large image: bytes through the kernel
dominate). Each is run with wrk as two client processes of ``--connections``/2 keep-alive
connections each (wrk is C, one thread each: the client costs little of the 2 cores). *1 server*:
both wrk processes against server A; *2 servers*: one against A, one against B (clients split,
as a round-robin or a load balancer would). Sides alternate (A B, then B A) for ``--rounds``; the
best round of each side is shown with the CPU each server process and the clients used (from
/proc and wait4), so one can see whether the servers were the bottleneck. Every answer must be
2xx with no socket error, else the bench fails. No broker, no database. See bench/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid as uuidlib
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from imagesvc.shared.store import open_store  # noqa: E402
from tests.support.systems import System, start_image_server  # noqa: E402

SIDES = ("1 server", "2 servers")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", flush=True)


def put_image(store, content: bytes, name: str) -> str:
    """Publish ``content`` as a new image through the store's interface; returns its uuid."""
    uuid = str(uuidlib.uuid4())
    upload = store.upload(uuid, "bench")
    upload.write(content)
    upload.commit()
    store.write_manifest(uuid, {"v": 2, "uuid": uuid, "name": name, "version": "1.0", "type": "zvol", "os": "linux",
                                "files": [{"sha1": hashlib.sha1(content).hexdigest(), "size": len(content),
                                           "compression": "none"}]})
    return uuid


def server_cpu_seconds(system: System) -> float:
    """User + system CPU of the image server's process (all its threads) so far."""
    fields = (Path("/proc") / str(system.processes["image-server"].pid) / "stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14 and 15 of stat)


def run_wrk(targets: list[str], connections: int, seconds: float, headers: dict[str, str]) -> dict[str, Any]:
    """One wrk process per target, all at once; their summed requests, and the CPU they used."""
    procs = []
    for url in targets:
        out = tempfile.TemporaryFile(mode="w+")
        command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "30s"]
        for key, value in headers.items():
            command += ["-H", f"{key}: {value}"]
        procs.append((subprocess.Popen([*command, url], stdout=out, stderr=subprocess.STDOUT), out))
    requests, bad, client_cpu, elapsed = 0, 0, 0.0, 0.0
    for process, out in procs:
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        client_cpu += usage.ru_utime + usage.ru_stime
        out.seek(0)
        text = out.read()
        out.close()
        done = re.search(r"(\d+) requests in ([\d.]+)(m?s)", text)
        if process.returncode != 0 or done is None:
            raise SystemExit(f"wrk failed ({process.returncode}):\n{text}")
        requests += int(done.group(1))
        elapsed = max(elapsed, float(done.group(2)) / (1000 if done.group(3) == "ms" else 1))
        non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
        errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
        bad += (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, errors.groups())) if errors else 0)
    if bad:
        raise SystemExit(f"{bad} answers were not 2xx or failed ({targets})")
    return {"requests": requests, "seconds": elapsed, "client_cpu_s": client_cpu}


def measure(side: str, servers: list[System], path: str, payload: int, args: argparse.Namespace,
            headers: dict[str, str]) -> dict[str, Any]:
    first, second = servers
    targets = [first.url + path] * 2 if side == "1 server" else [first.url + path, second.url + path]
    cpu_before = [server_cpu_seconds(s) for s in servers]
    load = os.getloadavg()[0]
    ran = run_wrk(targets, args.connections // 2, args.seconds, headers)
    cpu = [server_cpu_seconds(s) - before for s, before in zip(servers, cpu_before)]
    seconds = ran["seconds"]
    return {"rps": round(ran["requests"] / seconds, 1), "mb_s": round(ran["requests"] * payload / seconds / 1e6, 1),
            "requests": ran["requests"], "seconds": seconds,
            "server_cpu_pct": [round(100 * c / seconds) for c in cpu],
            "client_cpu_pct": round(100 * ran["client_cpu_s"] / seconds), "load_before": round(load, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections in all (split in two wrk)")
    parser.add_argument("--seconds", type=int, default=8, help="measuring window of each round and side")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each side")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of load on both servers per workload first")
    parser.add_argument("--small-kib", type=int, default=4, help="size of the small image")
    parser.add_argument("--large-mib", type=int, default=64, help="size of the large image")
    parser.add_argument("--range-kib", type=int, default=64, help="size of the range workload's ranges")
    parser.add_argument("--workloads", default="small,range,large", help="which of small, range, large")
    parser.add_argument("--json", metavar="PATH", default=None,
                        help="write the result there (default: bench/results/image-servers-<timestamp>.json)")
    args = parser.parse_args()
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if unknown := set(workloads) - {"small", "range", "large"}:
        parser.error(f"unknown workloads: {sorted(unknown)}")
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install -y wrk)")

    workdir = Path(tempfile.mkdtemp(prefix="imagesvc-bench-image-servers-"))
    store_root = workdir / "store"
    store = open_store(str(store_root))
    small = os.urandom(args.small_kib * 1024)
    large = os.urandom(args.large_mib * 1024 * 1024)
    images = {"small": put_image(store, small, "bench-small"), "large": put_image(store, large, "bench-large")}
    range_first = len(large) // 2
    range_last = range_first + args.range_kib * 1024 - 1
    plans = {  # workload -> (path, payload bytes per answer, headers)
        "small": (f"/images/{images['small']}/file", len(small), {}),
        "range": (f"/images/{images['large']}/file", args.range_kib * 1024,
                  {"Range": f"bytes={range_first}-{range_last}"}),
        "large": (f"/images/{images['large']}/file", len(large), {}),
    }
    servers: list[System] = []
    results: dict[str, dict[str, list[dict[str, Any]]]] = {w: {side: [] for side in SIDES} for w in workloads}
    try:
        for index in range(2):
            (workdir / f"server-{index}").mkdir()
            servers.append(start_image_server(workdir / f"server-{index}", store_root))
        for content, uuid in ((small, images["small"]), (large, images["large"])):
            answers = [httpx.get(f"{s.url}/images/{uuid}/file", timeout=120) for s in servers]
            if any(a.status_code != 200 or a.content != content for a in answers) or \
                    len({a.headers.get("content-md5") for a in answers}) != 1:
                raise SystemExit("the two image servers do not serve the same bytes and Content-MD5")
        log(f"two image servers over {store_root}: {servers[0].url}, {servers[1].url}; nproc {os.cpu_count()}, "
            f"load {os.getloadavg()[0]:.2f}")
        for workload in workloads:  # warm-up: the servers' thread pools started, the files in the page cache
            path, _, headers = plans[workload]
            run_wrk([s.url + path for s in servers], args.connections // 2, args.warmup, headers)
        for number in range(1, args.rounds + 1):
            order = SIDES if number % 2 else tuple(reversed(SIDES))
            for workload in workloads:
                path, payload, headers = plans[workload]
                for side in order:
                    outcome = measure(side, servers, path, payload, args, headers)
                    results[workload][side].append(outcome)
                    log(f"round {number} {workload}, {side}: {outcome}")
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    best = {w: {side: max(results[w][side], key=lambda r: r["rps"]) for side in SIDES} for w in workloads}
    titles = {"small": f"whole file, {args.small_kib} KiB", "range": f"{args.range_kib} KiB range of the "
              f"{args.large_mib} MiB file", "large": f"whole file, {args.large_mib} MiB"}
    print(f"\nwrk, {args.connections} keep-alive connections (two wrk processes), {args.seconds:g} s per side and "
          f"round, best of {args.rounds}; nproc {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}\n")
    print("| workload | figure | 1 server | 2 servers | ratio |")
    print("| --- | --- | --- | --- | --- |")
    from report import figure, write_json

    figures = []
    for workload in workloads:
        one, two = best[workload]["1 server"], best[workload]["2 servers"]
        for key, unit in (("rps", "requests/s"), ("mb_s", "MB/s")):
            ratio = two[key] / one[key] if one[key] else float("nan")
            print(f"| {titles[workload]} | {unit} | {one[key]} | {two[key]} | {ratio:.2f} |")
        print(f"| {titles[workload]} | CPU % of server A, B | {one['server_cpu_pct'][0]}, {one['server_cpu_pct'][1]} | "
              f"{two['server_cpu_pct'][0]}, {two['server_cpu_pct'][1]} | |")
        print(f"| {titles[workload]} | CPU % of the clients (wrk) | {one['client_cpu_pct']} | {two['client_cpu_pct']} | |")
        per_cpu = [side["rps"] / max(1, sum(side["server_cpu_pct"])) * 100 for side in (one, two)]
        print(f"| {titles[workload]} | requests per CPU-second of the servers | {per_cpu[0]:.0f} | {per_cpu[1]:.0f} | "
              f"{per_cpu[1] / per_cpu[0]:.2f} |")
        # imagesvc: two servers; baseline: one server, same clients, same store, same run. The
        # per-request workload is the one the server's own work bounds: it carries the target.
        ratio = two["rps"] / one["rps"] if one["rps"] else float("nan")
        target = "> 1.00" if workload == "small" else None
        figures.append(figure(f"{titles[workload]}: requests/s, 2 image servers vs 1", two["rps"], one["rps"], ratio,
                              target, ratio > 1.0 if target else None))
        figures.append(figure(f"{titles[workload]}: MB/s, 2 image servers vs 1", two["mb_s"], one["mb_s"],
                              two["mb_s"] / one["mb_s"] if one["mb_s"] else float("nan")))
        figures.append(figure(f"{titles[workload]}: requests per CPU-second of the servers, 2 vs 1",
                              round(per_cpu[1]), round(per_cpu[0]), per_cpu[1] / per_cpu[0]))
    write_json("image_servers", args, figures, {"rounds": results, "best": best, "nproc": os.cpu_count()},
               path=args.json, kind="image-servers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
