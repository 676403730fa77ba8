"""A model change on a bank of ROWS embedded questions, measured against its goals.

    .venv/bin/python bench/generations.py [--rows 100000] [--queries 100]

One throwaway cluster, the search bench's bank (ROWS rows of 1024 dimensions, the HNSW index,
one user with 0.9 % of the rows), a loopback embedding server of zero cost.  Two rounds, each:

1. a plain drain: every row queued again for the served model (`requeue_model`), drained by
   `study-embed drain` (the honest baseline for a drain rate);
2. `study-embed model begin` of another model, then its generation drained by the same
   listener (NEXT_EMBEDDING_*); then, the change in progress (both generations and both HNSW
   indexes in the table), similar-question search of the served generation timed as before
   it, with recall@10 against an exact scan;
3. `study-embed model switch`, while an app connection runs single-row updates and searches in
   a loop: the build of the next generation's HNSW index (CONCURRENTLY), the switch's wall
   time after it, and the longest any of those statements waited;
4. `study-embed model drop`.

Search is timed on the freshly loaded bank, after each plain drain (no change in progress) and
after each next generation's drain (the change in progress): the same queries, and before the
last two the same churn of the table (every row updated twice).
Benchmarks are not tests: nothing here asserts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time

import psycopg
import search as search_bench
from common import print_figures, scratch_database, stamped_log

from study_embed.migrate import Migrator
from study_embed_dev.embed_server import EmbedServer

BATCH, CONCURRENCY = 100, 2


def _drain(url: str, server: EmbedServer, next_model: str | None) -> float:
    """One `study-embed drain` to the end; its wall time."""
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "EMBEDDING_URL": server.url,
        "EMBEDDING_MODEL": _served(url),
        "LOG_LEVEL": "WARNING",
        "BATCH_SIZE": str(BATCH),
        "CONCURRENCY": str(CONCURRENCY),
    }
    if next_model:
        env |= {"NEXT_EMBEDDING_URL": server.url, "NEXT_EMBEDDING_MODEL": next_model}
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "study_embed.cli", "drain"], env=env, capture_output=True, text=True
    )
    if r.returncode != 0:
        sys.exit(f"drain failed ({r.returncode}):\n{r.stderr}")
    return time.monotonic() - t0


def _served(url: str) -> str:
    with psycopg.connect(url) as c:
        return c.execute("SELECT study_embed.served_model()").fetchone()[0]


def _missing(url: str, column: str) -> int:
    with psycopg.connect(url) as c:
        return c.execute(
            psycopg.sql.SQL(
                "SELECT count(*) FROM study_questions WHERE deleted_at IS NULL AND {} <> 'ready'"
            ).format(psycopg.sql.Identifier(column))
        ).fetchone()[0]


def _vacuuming(url: str) -> str | None:
    """What a VACUUM of the table (the autovacuum, after a drain's dead rows) is doing now: the
    search figures beside it share the machine with it."""
    with psycopg.connect(url) as c:
        return c.execute(
            "SELECT string_agg(phase, ', ') FROM pg_stat_progress_vacuum"
            " WHERE relid = 'study_questions'::regclass"
        ).fetchone()[0]


def _app_statements(url: str, ids: list[int], stop: threading.Event, out: list) -> None:
    """An app connection: a single-row update, then a search, again and again; each as
    (start, seconds)."""
    with psycopg.connect(url, autocommit=True) as c:
        c.prepare_threshold = None  # the table's columns are renamed under it
        i = 0
        while not stop.is_set():
            qid = ids[i % len(ids)]
            for statement, params in (
                ("UPDATE study_questions SET explanation = %s WHERE id = %s", (f"e{i}", qid)),
                (
                    "SELECT count(*) FROM study_embed.similar_questions(%s, %s, 10)",
                    (search_bench.BIG_USER, qid),
                ),
            ):
                t0 = time.monotonic()
                c.execute(statement, params)
                out.append((t0, time.monotonic() - t0))
            i += 1


def _switch(url: str, ids: list[int]) -> dict:
    stop, seen = threading.Event(), []
    built: list[float] = []
    migrator = Migrator(
        url,
        cron=False,
        log=lambda m: (
            built.append(float(m.split(" in ")[1].split()[0])) if " built " in m else None
        ),
    )
    app = threading.Thread(target=_app_statements, args=(url, ids, stop, seen), daemon=True)
    app.start()
    time.sleep(2)  # the app at its pace before the switch
    t0 = time.monotonic()
    migrator.generation("switch")
    t1 = time.monotonic()
    time.sleep(1)
    stop.set()
    app.join()
    before = [s for start, s in seen if start + s < t0]
    during = [s for start, s in seen if start <= t1 and start + s >= t0]
    return {
        "switch_command_s": t1 - t0,
        "index_build_s": sum(built),
        "switch_s": t1 - t0 - sum(built),
        "app_statement_max_wait_s": max(during, default=0.0),
        "app_statements_during": len(during),
        "app_statement_p50_before_ms": statistics.median(before) * 1000 if before else None,
    }


def run(rows: int, queries: int, log) -> dict:
    out: dict = {"rows": rows, "rounds": []}
    server = EmbedServer(dim=search_bench.DIM)
    server.constant = True
    try:
        with scratch_database(
            search_bench.DIM,
            settings="-c shared_buffers=2GB -c maintenance_work_mem=1GB",
            model=search_bench.MODEL,
        ) as (_, url):
            log(f"generations: loading {rows} rows and their HNSW index")
            search_bench.load(url, rows, big_user_rows=int(rows * 0.009))
            migrator = Migrator(url, cron=False, log=lambda _m: None)
            with psycopg.connect(url) as conn:
                ids = [
                    r[0]
                    for r in conn.execute(
                        "SELECT id FROM study_questions WHERE user_id = %s ORDER BY random()"
                        " LIMIT %s",
                        (search_bench.BIG_USER, queries),
                    )
                ]
            search_bench.measure(url, ids[:20], ())  # warm the cache
            out["search_before"] = search_bench.measure(url, ids, ())
            log(
                f"generations: search before a change: p50 "
                f"{out['search_before']['median_ms']:.1f} ms, recall@10 "
                f"{out['search_before']['recall_at_10']:.3f}"
            )
            for k, next_model in enumerate(("m-next", "m-after-next")):
                r: dict = {}
                with psycopg.connect(url, autocommit=True) as c:
                    # every row queued again (requeue_model queues the rows of another model
                    # than the one it is given), for the served model's listener
                    c.execute("SELECT study_embed.requeue_model('another-model', 0, %s)", (rows,))
                wall = _drain(url, server, None)
                r["plain_drain_rows_per_s"] = rows / wall
                # search after the plain drain (no change), to compare with search after the
                # next generation's drain (the change in progress): the same churn before both
                search_bench.measure(url, ids[:20], ())  # warm the cache
                r["search_outside"] = search_bench.measure(url, ids, ())
                r["search_outside"]["vacuum"] = _vacuuming(url)
                t0 = time.monotonic()
                migrator.generation("begin", model=next_model, dimension=search_bench.DIM)
                r["begin_s"] = time.monotonic() - t0
                r["next_drain_rows_per_s"] = rows / _drain(url, server, next_model)
                search_bench.measure(url, ids[:20], ())  # warm the cache, as before
                r["search_during"] = search_bench.measure(url, ids, ())
                r["search_during"]["vacuum"] = _vacuuming(url)
                r["search_during_interleaved"] = search_bench.measure(
                    url, ids, (), interleaved=True
                )
                r["missing_before_switch"] = _missing(url, "embedding_shadow_status")
                r.update(_switch(url, ids))
                t0 = time.monotonic()
                migrator.generation("drop")
                r["drop_s"] = time.monotonic() - t0
                out["rounds"].append(r)
                log(
                    f"generations round {k + 1}: plain drain {r['plain_drain_rows_per_s']:.0f}"
                    f" rows/s, next generation {r['next_drain_rows_per_s']:.0f} rows/s; search "
                    f"p50 {r['search_outside']['median_ms']:.1f} ms after the plain drain, "
                    f"{r['search_during']['median_ms']:.1f} ms during the change, recall@10 "
                    f"{r['search_outside']['recall_at_10']:.3f} / "
                    f"{r['search_during']['recall_at_10']:.3f} (a VACUUM of the table beside "
                    f"them: {r['search_outside']['vacuum'] or 'none'} / "
                    f"{r['search_during']['vacuum'] or 'none'}; timed between exact scans as "
                    f"before: {r['search_during_interleaved']['median_ms']:.1f} ms); "
                    f"switch {r['switch_s']:.2f} s "
                    f"(the next HNSW index built before it in {r['index_build_s']:.1f} s), "
                    f"an app statement waited at most {r['app_statement_max_wait_s']:.2f} s; "
                    f"begin {r['begin_s']:.2f} s, drop {r['drop_s']:.2f} s"
                )
    finally:
        server.stop()
    rounds = out["rounds"]
    out["drain_ratio"] = statistics.median(
        x["next_drain_rows_per_s"] / x["plain_drain_rows_per_s"] for x in rounds
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args()
    out = run(
        args.rows,
        args.queries,
        stamped_log(),
    )
    print_figures(out, args.json)


if __name__ == "__main__":
    main()
