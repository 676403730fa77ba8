"""Adopting a bank the seed's own worker embedded (printed by `make bench`): ROWS `ready` rows of
the configured model, packed as a restore leaves them, migrated while an app writes and searches.

- migrate: seconds of the whole `migrate` (the schema, the adoption's walk, the CHECKs'
  validation), and the rows it adopted and queued;
- requests: the embedding requests a drain makes afterwards (0: every vector kept);
- the app: one client updating random questions (a column the pipeline ignores) and running the
  seed's similar-question search, back to back; its slowest statement and its p99 while
  `migrate` runs, and, the baseline, for as long in the same run just before.

Run alone: python bench/adoption.py [--rows N]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import threading
import time

import psycopg

from study_embed.migrate import Migrator
from study_embed.worker import PROBE_TEXT
from study_embed_dev.embed_server import EmbedServer
from study_embed_dev.localdb import scratch_cluster
from study_embed_dev.rows import vector_index_built_after
from study_embed_dev.seed_bank import GENERATED_READY, SCHEMA, SEED_MODEL, owner


class App(threading.Thread):
    """An app's client: an UPDATE of a random question, then a search, until stopped."""

    def __init__(self, url: str, rows: int) -> None:
        super().__init__(daemon=True)
        self.url, self.rows = url, rows
        self.stop = threading.Event()
        self.latencies: list[float] = []

    def run(self) -> None:
        rng = random.Random(7)
        with psycopg.connect(self.url, autocommit=True) as c:
            while not self.stop.is_set():
                qid = rng.randint(1, self.rows)
                for statement in (
                    "UPDATE study_questions SET explanation = now()::text WHERE id = %s",
                    "SELECT id FROM study_questions WHERE deleted_at IS NULL"
                    " AND embedding IS NOT NULL ORDER BY embedding <=>"
                    " (SELECT embedding FROM study_questions WHERE id = %s) LIMIT 5",
                ):
                    t = time.monotonic()
                    cur = c.execute(statement, (qid,))
                    if cur.description:
                        cur.fetchall()
                    self.latencies.append(time.monotonic() - t)

    def figures(self) -> dict:
        xs = sorted(self.latencies)
        return {
            "statements": len(xs),
            "max_ms": round(xs[-1] * 1000, 1) if xs else None,
            "p99_ms": round(xs[int(len(xs) * 0.99)] * 1000, 1) if xs else None,
        }


def _app_for(url: str, rows: int, seconds: float | None = None, during=None) -> dict:
    app = App(url, rows)
    app.start()
    result = None
    if during is not None:
        result = during()
    else:
        time.sleep(seconds or 0)
    app.stop.set()
    app.join()
    return {"app": app.figures(), "result": result}


def run(rows: int, log) -> dict:
    with scratch_cluster("-c maintenance_work_mem=1GB") as (_, url):
        log(f"adoption: loading {rows} ready rows of the seed's worker (and its HNSW index)")
        with psycopg.connect(url, autocommit=True) as c:
            c.execute(SCHEMA)
            uid, tid = owner(c)
            with vector_index_built_after(c):
                c.execute(GENERATED_READY, {"uid": uid, "tid": tid, "model": SEED_MODEL, "n": rows})
            c.execute("VACUUM ANALYZE study_questions")
        migrate_s: list[float] = []

        def migrate():
            t = time.monotonic()
            report = Migrator(url, model=SEED_MODEL, cron=False, log=lambda m: None).run()
            migrate_s.append(time.monotonic() - t)
            return report

        baseline = _app_for(url, rows, seconds=10)
        log(
            f"adoption: migrate while the app writes ({baseline['app']['statements']} "
            "statements in the 10 s before)"
        )
        during = _app_for(url, rows, during=migrate)
        report = during["result"]
        server = EmbedServer(dim=1024)
        try:
            env = {
                **os.environ,
                "DATABASE_URL": url,
                "EMBEDDING_URL": server.url,
                "EMBEDDING_MODEL": SEED_MODEL,
                "LOG_LEVEL": "WARNING",
            }
            subprocess.run(
                [sys.executable, "-m", "study_embed.cli", "drain"],
                env=env,
                check=True,
                capture_output=True,
            )
            requests = len([t for t in server.texts() if t != PROBE_TEXT])
        finally:
            server.stop()
        return {
            "rows": rows,
            "migrate_s": round(migrate_s[0], 2),
            "adopted": report.adoption.get("adopted", 0),
            "queued": sum(n for k, n in report.adoption.items() if k.startswith("queued")),
            "embedding_requests": requests,
            "app_before": baseline["app"],
            "app_during": during["app"],
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    args = ap.parse_args()
    t0 = time.monotonic()
    print(run(args.rows, lambda m: print(f"[{time.monotonic() - t0:5.0f}s] {m}", file=sys.stderr)))


if __name__ == "__main__":
    main()
