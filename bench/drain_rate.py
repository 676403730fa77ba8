"""Rows per second of `study-embed drain` against a zero-cost loopback embedding server, and the
CPU it costs per row: the listener's (the drain process and its children) and PostgreSQL's
(every server process of the throwaway cluster, ended ones included).

    .venv/bin/python bench/drain_rate.py [--rows 10000] [--configs 10x1,50x2,...] [--no-index]

Starts its own throwaway PostgreSQL cluster (pg_cron preloaded, as `make db-up` does), migrates
a database, and for each BATCHxCONCURRENCY setting loads ROWS new questions and times a drain.
The embedding server answers from 4,096 pre-encoded 1024-dim vectors, so the figure is
the pipeline's own ceiling (claim, HTTP, JSON, complete, triggers, indexes).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import time

import psycopg
from common import LOAD, cluster_cpu, scratch_database

from study_embed_dev.embed_server import EmbedServer
from study_embed_dev.rows import add_topic, add_user


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--configs", default="10x1,10x2,50x2,100x2,200x2,100x4")
    ap.add_argument("--no-index", action="store_true", help="drop the HNSW index first")
    args = ap.parse_args()

    server = EmbedServer(dim=1024)
    server.constant = True
    with scratch_database() as (cluster, url):
        with psycopg.connect(url, autocommit=True) as conn:
            if args.no_index:
                conn.execute("DROP INDEX study_questions_embedding_hnsw")
            uid = add_user(conn, "b@x")
            tid = add_topic(conn, uid, "t")
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "EMBEDDING_URL": server.url,
            "EMBEDDING_API": "tei",
            "LOG_LEVEL": "WARNING",
        }
        print(
            f"drain of {args.rows} new rows, zero-cost embedder, HNSW index "
            f"{'dropped' if args.no_index else 'in place'}, {os.cpu_count()} CPUs"
        )
        print(
            f"{'batch':>6} {'conc':>5} {'rows/s':>9} {'seconds':>8} {'listener ms/row':>16}"
            f" {'postgres ms/row':>16}"
        )
        for cfg in args.configs.split(","):
            batch, conc = (int(x) for x in cfg.split("x"))
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("TRUNCATE study_question_attempts, study_questions CASCADE")
                conn.execute(LOAD, {"uid": uid, "tid": tid, "n": args.rows})
                conn.execute("VACUUM ANALYZE study_questions")
            pg0, me0 = (
                cluster_cpu(cluster, live_children=True),
                resource.getrusage(resource.RUSAGE_CHILDREN),
            )
            t0 = time.monotonic()
            r = subprocess.run(
                [sys.executable, "-m", "study_embed.cli", "drain"],
                text=True,
                capture_output=True,
                env={**env, "BATCH_SIZE": str(batch), "CONCURRENCY": str(conc)},
            )
            wall = time.monotonic() - t0
            pg = cluster_cpu(cluster, live_children=True) - pg0
            me1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            listener = me1.ru_utime + me1.ru_stime - me0.ru_utime - me0.ru_stime
            m = re.search(r"embedded (\d+) rows in ([\d.]+) s", r.stderr)
            if r.returncode != 0 or not m or int(m.group(1)) != args.rows:
                sys.exit(f"drain failed:\n{r.stderr}")
            print(
                f"{batch:>6} {conc:>5} {args.rows / wall:>9.0f} {wall:>8.2f}"
                f" {listener * 1000 / args.rows:>16.3f} {pg * 1000 / args.rows:>16.3f}",
                flush=True,
            )
    server.stop()


if __name__ == "__main__":
    main()
