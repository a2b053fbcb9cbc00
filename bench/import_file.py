"""imagesvc import benchmark: a large image file imported into the store, next to the same work
done by standard tools in the same run.

    .venv/bin/python bench/import_file.py [--size-mib 1024] [--rounds 2]

Baseline: ``curl -s URL | tee <file on the store's filesystem> | sha1sum``, then ``sync``.
imagesvc: ``POST /api/image/<name>/`` on the distributed system (every service its own process),
timed from the answer (the request accepted) to the task's SUCCESS (the file verified, flushed
and published, the image OK). Rounds alternate (baseline, imagesvc, ...); the best of each side
counts. The importer's resident memory is sampled every 20 ms during its imports: the peak must
stay under 100 MiB whatever the size (the file is streamed, never buffered).

Needs RabbitMQ and PostgreSQL as the tests do, and curl. See bench/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for entry in (str(ROOT), str(HERE)):
    if entry not in sys.path:
        sys.path.insert(0, entry)

import orjson  # noqa: E402

from report import figure, write_json  # noqa: E402
from tests.support.services import POSTGRES_ADMIN_URL, RABBITMQ_URL  # noqa: E402
from tests.support.systems import start_distributed  # noqa: E402

BLOCK = 64 * 1024 * 1024
RSS_TARGET_MIB = 100
THROUGHPUT_TARGET = 0.95  # issue 15 (issue 4 asked 0.80)


def log(message: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", flush=True)


def make_file(path: Path, size: int, block: bytes | None = None) -> str:
    """A file of ``size`` bytes, ``block`` (default: a random one) repeated; returns its sha1."""
    block = block or os.urandom(min(BLOCK, size))
    digest = hashlib.sha1()
    with open(path, "wb") as handle:
        left = size
        while left:
            piece = block[:min(left, len(block))]
            handle.write(piece)
            digest.update(piece)
            left -= len(piece)
    return digest.hexdigest()


class FileOrigin:
    """Serves manifests and one file (with sendfile, so the origin is not the bottleneck)."""

    def __init__(self, file_path: Path):
        self.manifests: dict[str, bytes] = {}
        origin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?")[0]
                if path.endswith("/file"):
                    size = file_path.stat().st_size
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.send_header("Content-Length", str(size))
                    self.end_headers()
                    self.wfile.flush()
                    with open(file_path, "rb") as handle:
                        try:
                            self.connection.sendfile(handle)
                        except (BrokenPipeError, ConnectionResetError):
                            pass  # the probe reads a few bytes and hangs up
                    return
                body = origin.manifests.get(path)
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def add_manifest(self, size: int, sha1: str) -> tuple[str, str]:
        image_uuid = str(uuid.uuid4())
        manifest = {"v": 2, "uuid": image_uuid, "name": "bench", "version": "1", "type": "zvol", "os": "linux",
                    "files": [{"sha1": sha1, "size": size, "compression": "none"}]}
        path = f"/images/{image_uuid}"
        self.manifests[path] = orjson.dumps(manifest)
        return self.base + path, image_uuid

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class RssSampler:
    def __init__(self, pid: int, interval: float = 0.02):
        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._interval = interval
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, rss_mib(self.pid))
            except OSError:
                return
            self._stop.wait(self._interval)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *_exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def baseline_round(url: str, target: Path, sha1: str) -> float:
    started = time.monotonic()
    done = subprocess.run(f"curl -s '{url}' | tee '{target}' | sha1sum && sync", shell=True, capture_output=True,
                          text=True, check=True)
    seconds = time.monotonic() - started
    if done.stdout.split()[0] != sha1:
        raise RuntimeError(f"baseline sha1 mismatch: {done.stdout!r}")
    target.unlink()
    return seconds


def imagesvc_round(system, origin: FileOrigin, size: int, sha1: str, store: Path, index: int) -> dict[str, Any]:
    manifest_url, image_uuid = origin.add_manifest(size, sha1)
    name = f"bench-import-{index}"
    importer = system.processes["importer"].pid
    with system.client(0) as client, RssSampler(importer) as sampler:
        answer = client.post(f"/image/{name}/", json={"manifest_url": manifest_url, "dc": "main"})
        accepted = time.monotonic()
        if answer.status_code not in (200, 201):
            raise RuntimeError(f"import refused: {answer.status_code} {answer.text[:300]}")
        task_id = answer.json()["task_id"]
        while True:
            status = client.get(f"/task/{task_id}/status/")
            if status.status_code != 201:
                break
            time.sleep(0.02)
        finished = time.monotonic()
        if status.status_code != 200:
            raise RuntimeError(f"import failed: {status.status_code} {status.text[:500]}")
        stored = store / image_uuid / "file"
        if stored.stat().st_size != size:
            raise RuntimeError("the stored file has the wrong size")
        # Free the space for the next round (data first, then the record).
        removal = client.delete(f"/image/{name}/").json()["task_id"]
        while client.get(f"/task/{removal}/status/").status_code == 201:
            time.sleep(0.05)
    return {"seconds": finished - accepted, "importer_peak_rss_mib": sampler.peak}


def throughput_and_rss_rows(size: int, best_ours: float, best_base: float, peak: float, idle: float, *,
                             throughput: str, rss: str, target: float) -> list[tuple]:
    """The two rows of a file benchmark's table: throughput (best rounds) and peak RSS."""
    ratio = best_base / best_ours
    return [
        (throughput, size / best_ours / 2**20, size / best_base / 2**20, ratio, f">= {target:.2f}", ratio >= target),
        (rss, peak, idle, None, f"< {RSS_TARGET_MIB}", peak < RSS_TARGET_MIB),
    ]


def print_table(rows: list[tuple], heading: str) -> None:
    print()
    print(f"{heading:42} | {'imagesvc':>9} | {'baseline':>9} | {'ratio':>5} | {'target':>7} | pass")
    for name, ours_v, base_v, r, target, ok in rows:
        print(f"{name:42} | {ours_v:9.1f} | {base_v:9.1f} | {r if r is None else round(r, 2)!s:>5} | {target:>7} | "
              f"{'PASS' if ok else 'FAIL'}")


def round_figures(rounds: list[dict[str, Any]], ours: str, base: str, size: int) -> dict[str, Any]:
    """The information row ``rounds 1 / 2 / ...`` of a file benchmark (MiB/s of each round)."""
    return figure(f"  {'round 1' if len(rounds) == 1 else f'rounds 1-{len(rounds)}'}, MiB/s, info",
                  " / ".join(f"{size / r[ours] / 2**20:.0f}" for r in rounds),
                  " / ".join(f"{size / r[base] / 2**20:.0f}" for r in rounds))


def rows_as_figures(rows: list[tuple]) -> list[dict[str, Any]]:
    """The rows of ``throughput_and_rss_rows`` as ``figures``."""
    return [figure(name, ours_v, base_v, r, target, ok) for name, ours_v, base_v, r, target, ok in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dir", default=None, help="work directory (default: a new one under the system temp dir)")
    parser.add_argument("--json", metavar="PATH", default=None,
                        help="write the result there (default: bench/results/import-<timestamp>.json)")
    args = parser.parse_args(argv)
    size = args.size_mib * 1024 * 1024
    workdir = Path(tempfile.mkdtemp(prefix="imagesvc-import-bench-", dir=args.dir))
    results: dict[str, Any] = {"size_bytes": size, "rounds": []}
    system = origin = None
    try:
        source = workdir / "source.img"
        log(f"writing a {args.size_mib} MiB source file")
        sha1 = make_file(source, size)
        origin = FileOrigin(source)
        store = workdir / "store"
        store.mkdir()
        log("starting the distributed system with an image store")
        (workdir / "system").mkdir()
        system = start_distributed(workdir / "system", broker_url=RABBITMQ_URL, postgres_admin_url=POSTGRES_ADMIN_URL,
                                   gateways=1, extra_env={"IMAGESVC_IMAGE_STORE": str(store)}, contract_tap=False)
        idle_rss = rss_mib(system.processes["importer"].pid)
        results["importer_idle_rss_mib"] = idle_rss
        file_url = origin.base + "/images/x/file"
        for number in range(1, args.rounds + 1):
            base_s = baseline_round(file_url, store / "baseline.img", sha1)
            log(f"round {number}: baseline curl | tee | sha1sum; sync: {base_s:.2f} s "
                f"({size / base_s / 2**20:.0f} MiB/s)")
            ours = imagesvc_round(system, origin, size, sha1, store, number)
            log(f"round {number}: imagesvc import accepted -> OK: {ours['seconds']:.2f} s "
                f"({size / ours['seconds'] / 2**20:.0f} MiB/s), importer peak RSS {ours['importer_peak_rss_mib']:.0f} MiB")
            results["rounds"].append({"baseline_s": base_s, **ours})
    finally:
        if system is not None:
            system.stop()
        if origin is not None:
            origin.close()
        shutil.rmtree(workdir, ignore_errors=True)
    best_base = min(r["baseline_s"] for r in results["rounds"])
    best_ours = min(r["seconds"] for r in results["rounds"])
    peak = max(r["importer_peak_rss_mib"] for r in results["rounds"])
    ratio = best_base / best_ours
    rows = throughput_and_rss_rows(size, best_ours, best_base, peak, idle_rss, target=THROUGHPUT_TARGET,
                                   throughput="import throughput, MiB/s (best round)",
                                   rss="importer peak RSS during imports, MiB")
    print_table(rows, "figure")
    print("(baseline of the RSS row: the importer's resident memory before any import)")
    results.update(best_baseline_s=best_base, best_imagesvc_s=best_ours, ratio=ratio, importer_peak_rss_mib=peak)
    figures = rows_as_figures(rows)
    figures.insert(1, round_figures(results["rounds"], "seconds", "baseline_s", size))
    write_json("import_file", args, figures, results, path=args.json, kind="import")
    return 0


if __name__ == "__main__":
    sys.exit(main())
