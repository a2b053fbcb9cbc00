"""A catalogue of a million images on PostgreSQL: pages, filters, show, and the whole list streamed.

    .venv/bin/python bench/catalogue.py [--images 1000000] [--requests 200] [--rounds 2] [--quick]

1. A fresh database is migrated and filled with ``--images`` synthetic images through the
   projector's row builder (bench/seed_catalogue.py), then a one-worker gateway serves it.
2. Pages of 100 (``limit``/``marker``, keyset) in every sort order: the first page against a page
   90 % deep into the catalogue (asked for as the previous page's ``Link`` says), alternating,
   ``--requests`` each per round. Target: the deep page
   takes at most 1.5 times the first (keyset paging: the depth costs nothing; OFFSET would read
   and throw away 900,000 rows).
3. A filtered page and a show by name, each next to the same query run straight on PostgreSQL by
   psycopg (a prepared statement on one connection: the floor any HTTP service over this database
   stands on).
4. ``GET /api/image/?full=true`` — the whole catalogue unpaged, as Danube Cloud's ``es`` client
   asks for it — read as a stream; the gateway's peak RSS (``VmHWM``, reset before) next to a
   baseline process that runs ``COPY (SELECT doc, dcs …) TO STDOUT`` with psycopg and encodes the
   same rows into the same JSON list, writing it nowhere; both processes' time and peak RSS.

The machine is small and shared: read the ratios, not the absolute numbers. See bench/README.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for entry in (str(ROOT), str(HERE)):
    if entry not in sys.path:
        sys.path.insert(0, entry)

import httpx  # noqa: E402

from report import figure, process_tree, write_json  # noqa: E402

PAGE = 100
#: How deep the "deep" page is, as a fraction of the catalogue.
DEPTH = 0.9
ORDERS = ["name", "-name", "created", "-created"]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def _sql_order(order_by: str) -> str:
    column = order_by.lstrip("-")
    direction = "DESC" if order_by.startswith("-") else "ASC"
    # The API's order is total: the unique name breaks ties (in the direction of the last field).
    return f"{column} {direction}" + ("" if column == "name" else f", name {direction}")


# --- process memory ---------------------------------------------------------------------------------


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def reset_peak(pids: list[int]) -> None:
    for pid in pids:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def peak_mib(pids: list[int]) -> float:
    """The largest peak RSS among ``pids`` (the gateway's worker is one process)."""
    return max(_status_kib(pid, "VmHWM") for pid in pids) / 1024


def rss_mib(pids: list[int]) -> float:
    return max(_status_kib(pid, "VmRSS") for pid in pids) / 1024


# --- the baseline of the full list: COPY TO STDOUT + the same JSON --------------------------------------

RAW_COPY = """
import os, resource, sys, time
import psycopg
dsn, order = sys.argv[1], sys.argv[2]
started = time.perf_counter()
size = 0
with psycopg.connect(dsn) as conn, conn.cursor() as cursor, open(os.devnull, "wb") as sink:
    with cursor.copy(f"COPY (SELECT doc, dcs FROM rm_images WHERE access <> 9 ORDER BY {order}) TO STDOUT") as copy:
        sink.write(b'{"status":"SUCCESS","result":[')
        first = True
        for doc, dcs in copy.rows():
            item = doc.encode()[:-1] + b',"dcs":' + dcs.encode() + b"}"
            sink.write(item if first else b"," + item)
            size += len(item) + (0 if first else 1)
            first = False
        sink.write(b"]}")
elapsed = time.perf_counter() - started
print(elapsed, size, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def raw_full_list(dsn: str) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", RAW_COPY, dsn, _sql_order("name")], capture_output=True, text=True,
                          timeout=1800, check=True)
    seconds, size, peak = done.stdout.split()
    return {"seconds": float(seconds), "bytes": int(size), "peak_mib": float(peak)}


def gateway_full_list(client: httpx.Client, pids: list[int]) -> dict[str, float]:
    reset_peak(pids)
    before = rss_mib(pids)
    size, items = 0, 0
    started = time.perf_counter()
    with client.stream("GET", "/image/", params={"full": "true"}, timeout=1800) as response:
        if response.status_code != 200:
            response.read()
            raise RuntimeError(f"full list: {response.status_code} {response.text[:300]}")
        tail = b""
        for chunk in response.iter_bytes():
            size += len(chunk)
            # Images are counted by their uuid key: one per item, none in the envelope.
            items += (tail + chunk).count(b'"uuid":') - tail.count(b'"uuid":')
            tail = chunk[-16:]
    elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "bytes": size, "items": items, "peak_mib": peak_mib(pids), "idle_mib": before}


# --- latencies ------------------------------------------------------------------------------------------


def timed(call: Callable[[], Any], count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def http_get(client: httpx.Client, path: str, params: dict[str, Any], *, expect_items: int | None = None
             ) -> Callable[[], None]:
    def call() -> None:
        response = client.get(path, params=params)
        if response.status_code != 200:
            raise RuntimeError(f"GET {path} {params}: {response.status_code} {response.text[:300]}")
        if expect_items is not None and len(response.json()["result"]) != expect_items:
            raise RuntimeError(f"GET {path} {params}: {len(response.json()['result'])} items, expected {expect_items}")
    return call


def sql_query(conn, sql: str, params: tuple) -> Callable[[], None]:
    def call() -> None:
        conn.execute(sql, params, prepare=True).fetchall()
    return call


def alternate(sides: dict[str, Callable[[], None]], requests: int, rounds: int) -> dict[str, list[float]]:
    """Each side ``requests`` times per round, sides alternating round by round (warm-up first)."""
    for call in sides.values():
        timed(call, 10)
    samples: dict[str, list[float]] = {side: [] for side in sides}
    for _ in range(rounds):
        for side, call in sides.items():
            samples[side] += timed(call, requests)
    return samples


def summary(samples: list[float]) -> dict[str, float]:
    return {"p50": percentile(samples, 50), "p95": percentile(samples, 95), "p99": percentile(samples, 99)}


# --- the run --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=200, help="requests per side per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="100,000 images, 50 requests, one round")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON (bench/report.py)")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.requests, args.rounds = 100_000, 50, 1

    import psycopg

    from raw_pipeline import libpq_dsn
    from seed_catalogue import seed
    from tests.support.services import POSTGRES_ADMIN_URL, create_database, drop_database
    from tests.support.systems import start_gateway

    database_url = create_database(POSTGRES_ADMIN_URL)
    workdir = Path(tempfile.mkdtemp(prefix="bench-catalogue-"))
    system = None
    results: dict[str, Any] = {"images": args.images}
    try:
        system = start_gateway(workdir, workers=1, extra_env={"IMAGESVC_DATABASE_URL": database_url})
        system.api_key = system.admin("create-superadmin", "root").strip().splitlines()[-1]
        log(f"seeding {args.images:,} images (bench/seed_catalogue.py) ...")
        results["seed_seconds"] = seed(database_url, args.images)
        log(f"seeded in {results['seed_seconds']:.1f} s")
        dsn = libpq_dsn(database_url)
        gateway_pids = process_tree(system.processes["gateway"].pid)
        figures = []
        with psycopg.connect(dsn, autocommit=True) as conn, system.client() as client:
            client.timeout = httpx.Timeout(120.0)
            visible = conn.execute("SELECT count(*) FROM rm_images WHERE access <> 9").fetchone()[0]
            deep_offset = int(visible * DEPTH)

            # 2. first page against a deep page, in every order
            results["pages"] = {}
            for order in ORDERS:
                marker = conn.execute(f"SELECT name FROM rm_images WHERE access <> 9 ORDER BY {_sql_order(order)} "
                                      f"OFFSET %s LIMIT 1", (deep_offset,)).fetchone()[0]
                # The deep page as a client walking the list asks for it: the previous page's Link
                # (which carries ``marker_created`` in an order by ``created``).
                previous = client.get("/image/", params={"limit": PAGE, "order_by": order, "marker": marker})
                link = httpx.URL(str(previous.url)).join(previous.links["next"]["url"])
                deep_params = dict(link.params.multi_items())
                samples = alternate({
                    "first": http_get(client, "/image/", {"limit": PAGE, "order_by": order}, expect_items=PAGE),
                    "deep": http_get(client, "/image/", deep_params, expect_items=PAGE),
                }, args.requests, args.rounds)
                first, deep = summary(samples["first"]), summary(samples["deep"])
                ratio = deep["p50"] / first["p50"]
                results["pages"][order] = {"first": first, "deep": deep, "deep_params": deep_params, "ratio": ratio}
                log(f"page of {PAGE}, order_by={order}: first p50 {first['p50']:.2f} ms, 90 % deep p50 "
                    f"{deep['p50']:.2f} ms (ratio {ratio:.2f})")
                figures.append(figure(f"page 90 % deep / first page p50, order_by={order} (ms)",
                                      round(deep["p50"], 2), round(first["p50"], 2), round(ratio, 2), "<= 1.5",
                                      ratio <= 1.5))

            # 3. a filtered page and a show, against the same query on psycopg
            filtered_params = {"limit": PAGE, "ostype": 4, "status": 1, "owner": "owner017"}
            # The same predicates the gateway sends (ostype lives only in the stored document).
            filtered_sql = ("SELECT doc, dcs FROM rm_images WHERE access <> 9 AND doc LIKE %s AND status = %s "
                            "AND owner = %s ORDER BY name LIMIT %s")
            show_name = conn.execute("SELECT name FROM rm_images ORDER BY uuid OFFSET %s LIMIT 1",
                                     (visible // 2,)).fetchone()[0]
            for label, http_call, sql_call in (
                ("filtered page (ostype, status, owner; limit 100)",
                 http_get(client, "/image/", filtered_params),
                 sql_query(conn, filtered_sql, ('%,"ostype":4,%', 1, "owner017", PAGE))),
                ("show by name", http_get(client, f"/image/{show_name}/", {}),
                 sql_query(conn, "SELECT doc, dcs FROM rm_images WHERE name = %s", (show_name,))),
            ):
                samples = alternate({"imagesvc": http_call, "psycopg": sql_call}, args.requests, args.rounds)
                ours, floor = summary(samples["imagesvc"]), summary(samples["psycopg"])
                results[label] = {"imagesvc": ours, "psycopg": floor}
                log(f"{label}: imagesvc p50 {ours['p50']:.2f} ms p99 {ours['p99']:.2f} ms; psycopg p50 "
                    f"{floor['p50']:.2f} ms")
                figures.append(figure(f"{label} p50 (ms)", round(ours["p50"], 2), round(floor["p50"], 2),
                                      round(ours["p50"] / floor["p50"], 1)))

            # 4. the whole list, streamed, against COPY + the same JSON
            runs = []
            for round_ in range(args.rounds):
                ours = gateway_full_list(client, gateway_pids)
                raw = raw_full_list(dsn)
                runs.append({"imagesvc": ours, "raw": raw})
                log(f"full list round {round_ + 1}: imagesvc {ours['seconds']:.1f} s, {ours['bytes'] / 2**20:.0f} MiB, "
                    f"{ours['items']:,} images, gateway peak RSS {ours['peak_mib']:.0f} MiB (idle "
                    f"{ours['idle_mib']:.0f}); COPY + JSON {raw['seconds']:.1f} s, {raw['bytes'] / 2**20:.0f} MiB, "
                    f"peak RSS {raw['peak_mib']:.0f} MiB")
                if ours["items"] != visible:
                    raise RuntimeError(f"the full list had {ours['items']} images, the catalogue {visible}")
            results["full_list"] = runs
            best = min(runs, key=lambda r: r["imagesvc"]["seconds"])
            best_raw = min(r["raw"]["seconds"] for r in runs)
            figures.append(figure("full unpaged list, streamed (s)", round(best["imagesvc"]["seconds"], 1),
                                  round(best_raw, 1), round(best["imagesvc"]["seconds"] / best_raw, 2)))
            peak = max(r["imagesvc"]["peak_mib"] for r in runs)
            growth = max(r["imagesvc"]["peak_mib"] - r["imagesvc"]["idle_mib"] for r in runs)
            raw_peak = max(r["raw"]["peak_mib"] for r in runs)
            body = best["imagesvc"]["bytes"] / 2**20
            figures.append(figure(f"full list: gateway peak RSS (MiB) while sending {body:.0f} MiB, vs COPY process",
                                  round(peak), round(raw_peak), round(peak / raw_peak, 2)))
            # Bounded: what the gateway holds while streaming must not grow with the catalogue.
            figures.append(figure("full list: gateway RSS growth while streaming (MiB)", round(growth, 1), None, None,
                                  f"< {body / 10:.0f} (a tenth of the body)", growth < body / 10))
        print()
        print(f"{'figure':<62} {'imagesvc':>10} {'baseline':>10} {'ratio':>7}  target")
        for row in figures:
            print(f"{row['figure']:<62} {row['imagesvc']!s:>10} {row['baseline']!s:>10} {row['ratio']!s:>7}  "
                  f"{row['target'] or ''}{'' if row['met'] is None else (' met' if row['met'] else ' NOT met')}")
        write_json("catalogue", args, figures, results, path=args.json)
    finally:
        if system is not None:
            system.stop()
        drop_database(POSTGRES_ADMIN_URL, database_url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
