"""imagesvc snapshot export benchmark: a VM disk snapshot exported into the image store, next to
the same compression done by standard tools in the same run.

    .venv/bin/python bench/export_snapshot.py [--size-mib 1024] [--rounds 2] [--level 6]

The snapshot: a file of the file driver's layout, ``--size-mib`` large, made of a 64 MiB block
repeated; the block is 16 segments of 4 MiB: random bytes, log-like text, zeros, log-like text
(a quarter incompressible as compressed or encrypted files are, a quarter unallocated space, half
text that gzip shrinks about 4 times). Deflate sees 32 KiB back, so every repetition of the block
costs it as much work as the first.

Baseline: ``gzip -c -<level> <snapshot> | sha1sum``. imagesvc: ``export_snapshot`` (the node
agent's pipeline: zlib gzip at the same level, sha1 and size of the compressed bytes, written into
a LocalStore, fsync'd and renamed into place) in a child process that has first imported
everything ``imagesvc node-agent`` imports; timed inside the child around the export call. The
child's resident memory is sampled every 20 ms: the peak must stay under 100 MiB whatever the
size. Rounds alternate (baseline, imagesvc, ...); the best of each side counts. The snapshot is
read from the page cache by both sides (it was just written and read once before the rounds).
After the rounds, the stored file is decompressed and checked against the snapshot's sha1.

Needs gzip and sha1sum; no broker, no database. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for entry in (str(ROOT), str(HERE)):
    if entry not in sys.path:
        sys.path.insert(0, entry)

BLOCK_SEGMENTS = ("random", "text", "zeros", "text") * 4
SEGMENT = 4 * 1024 * 1024
THROUGHPUT_TARGET = 0.85
VM = "6f1d1f3e-0000-4000-8000-00000000be9c"
SNAPNAME = "bench"


def _text(size: int, rng: random.Random) -> bytes:
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 10))) for _ in range(2000)]
    lines, total = [], 0
    while total < size:
        line = (f"2026-11-27T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d} "
                f"host{rng.randint(1, 40)} {' '.join(rng.choices(words, k=rng.randint(4, 14)))} "
                f"id={rng.getrandbits(32):08x}\n")
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()[:size]


def make_snapshot(path: Path, size: int) -> str:
    """Write the snapshot (see the module docstring); returns its sha1."""
    rng = random.Random(20261127)
    block = b"".join(os.urandom(SEGMENT) if kind == "random" else bytes(SEGMENT) if kind == "zeros"
                     else _text(SEGMENT, rng) for kind in BLOCK_SEGMENTS)
    from import_file import make_file

    path.parent.mkdir(parents=True, exist_ok=True)
    sha1 = make_file(path, size, block)
    path.chmod(0o444)
    return sha1


def baseline_round(snapshot: Path, level: int) -> dict[str, Any]:
    started = time.monotonic()
    done = subprocess.run(f"gzip -c -{level} '{snapshot}' | sha1sum", shell=True, capture_output=True, text=True,
                          check=True)
    return {"seconds": time.monotonic() - started, "sha1": done.stdout.split()[0]}


def imagesvc_round(snapshots: Path, store: Path, level: int, image_uuid: str) -> dict[str, Any]:
    from import_file import RssSampler

    child = subprocess.Popen([sys.executable, __file__, "--child", str(snapshots), str(store), str(level), image_uuid],
                             stdout=subprocess.PIPE, text=True)
    with RssSampler(child.pid) as sampler:
        output, _ = child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"the export failed ({child.returncode})")
    return {**json.loads(output.strip().splitlines()[-1]), "peak_rss_mib": sampler.peak}


def child_main(snapshots: str, store_root: str, level: str, image_uuid: str) -> int:
    """The exporting process: loads what the node agent loads, then exports once."""
    __import__("imagesvc.bootstrap")  # the agent's imports, so its resident memory is the agent's
    from imagesvc.services.node_agent.export import SnapshotRef, export_snapshot
    from imagesvc.shared.snapshots import FileSnapshotDriver
    from imagesvc.shared.store import LocalStore

    with open("/proc/self/status") as status:  # not import_file.rss_mib: its imports would count too
        idle = next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:"))
    started = time.monotonic()
    exported = export_snapshot(FileSnapshotDriver(snapshots), SnapshotRef(VM, 1, SNAPNAME), LocalStore(store_root),
                               image_uuid, "bench", lambda *_: None, level=int(level))
    seconds = time.monotonic() - started
    print(json.dumps({"seconds": seconds, "sha1": exported.sha1, "size": exported.size,
                      "snapshot_bytes": exported.snapshot_bytes, "idle_rss_mib": idle}))
    return 0


def main(argv: list[str] | None = None) -> int:
    from import_file import log, print_table, round_figures, rows_as_figures, throughput_and_rss_rows
    from report import figure, write_json

    from imagesvc.services.node_agent.export import DEFAULT_GZIP_LEVEL
    from imagesvc.shared.snapshots import FileSnapshotDriver

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--level", type=int, default=DEFAULT_GZIP_LEVEL)
    parser.add_argument("--dir", default=None, help="work directory (default: a new one under the system temp dir)")
    parser.add_argument("--json", metavar="PATH", default=None,
                        help="write the result there (default: bench/results/export-<timestamp>.json)")
    args = parser.parse_args(argv)
    size = args.size_mib * 1024 * 1024
    workdir = Path(tempfile.mkdtemp(prefix="imagesvc-export-bench-", dir=args.dir))
    results: dict[str, Any] = {"size_bytes": size, "level": args.level, "rounds": [], "nproc": os.cpu_count(),
                               "loadavg_before": os.getloadavg()}
    try:
        snapshots = workdir / "vms"
        snapshot = Path(FileSnapshotDriver(str(snapshots)).snapshot_path(VM, 1, SNAPNAME))
        log(f"writing a {args.size_mib} MiB snapshot")
        sha1 = make_snapshot(snapshot, size)
        subprocess.run(["cat", str(snapshot)], stdout=subprocess.DEVNULL, check=True)  # in the page cache
        store = workdir / "store"
        store.mkdir()
        exported_uuid = None
        for number in range(1, args.rounds + 1):
            base = baseline_round(snapshot, args.level)
            log(f"round {number}: baseline gzip -{args.level} | sha1sum: {base['seconds']:.2f} s "
                f"({size / base['seconds'] / 2**20:.0f} MiB/s)")
            if exported_uuid is not None:
                shutil.rmtree(store / exported_uuid)
            exported_uuid = f"6f1d1f3e-0000-4000-8000-{number:012d}"
            ours = imagesvc_round(snapshots, store, args.level, exported_uuid)
            log(f"round {number}: imagesvc export: {ours['seconds']:.2f} s ({size / ours['seconds'] / 2**20:.0f} MiB/s), "
                f"{ours['size'] / 2**20:.0f} MiB stored, peak RSS {ours['peak_rss_mib']:.0f} MiB")
            results["rounds"].append({"baseline_s": base["seconds"], **ours})
        check = subprocess.run(f"gzip -dc '{store / exported_uuid / 'file'}' | sha1sum", shell=True,
                               capture_output=True, text=True, check=True)
        if check.stdout.split()[0] != sha1:
            raise RuntimeError("the stored file does not decompress to the snapshot")
        log("the stored file decompresses to the snapshot (sha1 checked)")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    best_base = min(r["baseline_s"] for r in results["rounds"])
    best_ours = min(r["seconds"] for r in results["rounds"])
    peak = max(r["peak_rss_mib"] for r in results["rounds"])
    idle = max(r["idle_rss_mib"] for r in results["rounds"])
    ratio = best_base / best_ours
    rows = throughput_and_rss_rows(size, best_ours, best_base, peak, idle, target=THROUGHPUT_TARGET,
                                   throughput="export throughput, MiB/s (best round)",
                                   rss="exporting process peak RSS, MiB")
    print_table(rows, f"figure (level {args.level})")
    print("(baseline of the RSS row: the exporting process's resident memory before the export)")
    results.update(best_baseline_s=best_base, best_imagesvc_s=best_ours, ratio=ratio, peak_rss_mib=peak,
                   idle_rss_mib=idle, stored_bytes=results["rounds"][-1]["size"])
    figures = rows_as_figures(rows)
    figures.insert(1, round_figures(results["rounds"], "seconds", "baseline_s", size))
    stored = results["stored_bytes"]
    figures += [figure("stored file, MiB (ratio: its share of the snapshot, info)", stored / 2**20, None,
                       stored / size),
                figure("stored file decompresses to the snapshot (sha1)", "yes", None, None, "yes", True)]
    write_json("export_snapshot", args, figures, results, path=args.json, kind="export")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        sys.exit(child_main(*sys.argv[2:]))
    sys.exit(main())
