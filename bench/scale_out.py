"""Listeners that scale out: ROWS new rows drained by 1, 2, 4 and 8 `study-embed listen`
processes at once, against a loopback server that takes DELAY seconds per request and serves
requests in parallel (a GPU server behind its batching queue).  Per run: rows/s, how many rows
were embedded more than once (must be 0: the claim hands each row to one listener), and the CPU
the listeners and PostgreSQL used, against what the machine has, to say where it stops
scaling.

    .venv/bin/python bench/scale_out.py [--rows 20000] [--listeners 1,2,4,8] [--batch 8]
                                        [--concurrency 1] [--delay 0.02]

Each listener holds one batch of BATCH rows in flight (one request): alone it is bound by the
server's latency, BATCH / DELAY rows/s, so that adding listeners measures the pipeline, not the
server.  No vector index (its inserts would be the bottleneck; BENCHMARKS.md has those).
A benchmark: it prints, it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

import psycopg
from common import cluster_cpu, fresh_rows, process_cpu, scratch_database

from study_embed.worker import PROBE_TEXT
from study_embed_dev.embed_server import EmbedServer


def one_run(cluster, url: str, server: EmbedServer, n: int, rows: int, args) -> dict:
    fresh_rows(url, rows)
    with server.lock:
        server.requests.clear()
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "EMBEDDING_URL": server.url,
        "EMBEDDING_API": "tei",
        "LOG_LEVEL": "WARNING",
        "BATCH_SIZE": str(args.batch),
        "CONCURRENCY": str(args.concurrency),
    }
    pg0, cpu0 = cluster_cpu(cluster, live_children=True), os.times()
    t0 = time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "study_embed.cli", "listen"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(n)
    ]
    with psycopg.connect(url, autocommit=True) as c:
        while True:  # the counters, not the rows: the watching costs next to nothing
            [(left,)] = c.execute(
                "SELECT coalesce(sum(live), 0) FROM study_embed.status WHERE status <> 'ready'"
            ).fetchall()
            if left == 0:
                break
            if any(p.poll() is not None for p in procs):
                sys.exit("a listener exited before the drain ended")
            time.sleep(0.2)
    wall = time.monotonic() - t0
    # CPU up to the last row, before the listeners, idle, start the near-duplicate pass over
    # what they embedded (without a vector index an exact scan per row: not the drain's cost)
    pg = cluster_cpu(cluster, live_children=True) - pg0
    listeners = sum(process_cpu(p.pid) for p in procs)
    cpu1 = os.times()
    server_cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)  # its threads
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        p.wait(timeout=60)
    texts = server.text_counts()
    texts.pop(PROBE_TEXT, None)  # each listener's start-up probe
    return {
        "listeners": n,
        "rows_per_s": rows / wall,
        "seconds": wall,
        "embedded_twice": sum(1 for k in texts.values() if k > 1),
        "rows_embedded": len(texts),
        # CPU used per second of wall time, in cores: what the machine had to give
        "cores_listeners": listeners / wall,
        "cores_postgres": pg / wall,
        "cores_server": server_cpu / wall,
    }


def run(
    rows: int,
    counts: list[int],
    batch: int,
    concurrency: int,
    delay: float,
    log,
) -> dict:
    args = argparse.Namespace(batch=batch, concurrency=concurrency)
    server = EmbedServer(dim=1024)
    server.constant = True
    server.delay = delay
    out: dict = {"rows": rows, "batch": batch, "concurrency": concurrency, "delay_s": delay}
    try:
        with scratch_database() as (cluster, url):
            with psycopg.connect(url, autocommit=True) as c:
                c.execute("DROP INDEX study_questions_embedding_hnsw")
            for n in counts:
                r = one_run(cluster, url, server, n, rows, args)
                out[str(n)] = r
                log(
                    f"scale-out: {n} listener(s), {rows} rows: {r['rows_per_s']:.0f} rows/s, "
                    f"{r['embedded_twice']} embedded twice; cores used: listeners "
                    f"{r['cores_listeners']:.2f}, PostgreSQL {r['cores_postgres']:.2f}, "
                    f"server {r['cores_server']:.2f} of {os.cpu_count()}"
                )
    finally:
        server.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--listeners", default="1,2,4,8")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--delay", type=float, default=0.02, help="server seconds per request")
    a = ap.parse_args()
    out = run(
        a.rows,
        [int(x) for x in a.listeners.split(",")],
        a.batch,
        a.concurrency,
        a.delay,
        lambda m: print(m, flush=True),
    )
    one = out[str(min(int(x) for x in a.listeners.split(",")))]["rows_per_s"]
    print(
        f"\n{'listeners':>9} {'rows/s':>8} {'x one':>6} {'twice':>6} {'cores: listeners':>17} "
        f"{'postgres':>9} {'server':>7}"
    )
    for k, r in out.items():
        if k.isdigit():
            print(
                f"{k:>9} {r['rows_per_s']:>8.0f} {r['rows_per_s'] / one:>6.2f} "
                f"{r['embedded_twice']:>6} {r['cores_listeners']:>17.2f} "
                f"{r['cores_postgres']:>9.2f} {r['cores_server']:>7.2f}"
            )


if __name__ == "__main__":
    main()
