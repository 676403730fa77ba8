"""Similar-question search on 100,000 rows of 1024 dimensions with the per-user filter.

    .venv/bin/python bench/search.py [--rows 100000] [--queries 200]

Loads ROWS embedded questions (1,000 users of 99 rows each, plus one user with 900 rows: 0.9 % of
the table), builds the HNSW index (m 16, ef_construction 64), and times
`study_embed.similar_questions(user, id, 10)` for questions of the 0.9 % user, with recall@10
against an exact scan.  Three ways: with the app's per-user B-tree index (the planner may then
scan the user's rows exactly), without it, and with the HNSW index forced (pgvector's iterative
scan then does it all).
Vectors are drawn around 300 centres, so that neighbourhoods are real.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time

import numpy as np
import psycopg
from common import scratch_database
from pgvector.psycopg import register_vector

DIM = 1024
MODEL = "m"  # the model the bench's database serves and its rows carry


BIG_USER = 0  # the user who owns 0.9 % of the rows, whose questions are queried


def render(q: str) -> str:
    return f"문제: {q}\n보기:\n1. a\n2. b\n3. c\n4. d"


def load(url: str, rows: int, big_user_rows: int) -> None:
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((300, DIM)).astype(np.float32)
    users = 1000
    per_user = (rows - big_user_rows) // users
    with psycopg.connect(url) as conn:
        register_vector(conn)
        conn.execute(
            "INSERT INTO users (id, email) SELECT g, 'u' || g FROM generate_series(0, %s) g",
            (users,),
        )
        conn.execute(
            "INSERT INTO study_topics (id, user_id, name) SELECT g, g, 't'"
            " FROM generate_series(0, %s) g",
            (users,),
        )
        conn.execute("DROP INDEX study_questions_embedding_hnsw")
        conn.execute("SET session_replication_role = replica")  # bulk load of embedded rows
        plan = [(BIG_USER, big_user_rows)] + [(u, per_user) for u in range(1, users + 1)]
        t0, done = time.monotonic(), 0
        with conn.cursor().copy(
            "COPY study_questions (user_id, study_topic_id, question_text, choice_1, choice_2,"
            " choice_3, choice_4, correct_choice, embedding, embedding_status,"
            " embedding_model, embedding_source_sha256, embedding_due_at,"
            " embedding_queued_at) FROM STDIN"
        ) as cp:
            for uid, n in plan:
                vecs = centres[rng.integers(300, size=n)] + 0.6 * rng.standard_normal((n, DIM))
                vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
                for i in range(n):
                    q = f"user {uid} question {i}"
                    cp.write_row(
                        (
                            uid,
                            uid,
                            q,
                            "a",
                            "b",
                            "c",
                            "d",
                            1,
                            vecs[i].astype(np.float32),
                            "ready",
                            MODEL,
                            hashlib.sha256(render(q).encode()).digest(),
                            None,
                            None,
                        )
                    )
                done += n
            print(f"loaded {done} rows in {time.monotonic() - t0:.0f} s", flush=True)
        conn.execute("RESET session_replication_role")
        conn.execute("SELECT study_embed.recount()")
        conn.commit()
        t0 = time.monotonic()
        conn.execute("SET maintenance_work_mem = '4GB'")
        conn.execute("SET max_parallel_maintenance_workers = 1")
        conn.execute(
            "CREATE INDEX study_questions_embedding_hnsw ON study_questions"
            " USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64)"
            " WHERE deleted_at IS NULL AND embedding IS NOT NULL"
        )
        conn.commit()
        print(f"built the HNSW index in {time.monotonic() - t0:.0f} s", flush=True)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE study_questions")


def inner_plan(conn, qid: int) -> str:
    """The plan of the KNN query inside study_embed._nearest(), via auto_explain."""
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
    for stmt in (
        "LOAD 'auto_explain'",
        "SET auto_explain.log_min_duration = 0",
        "SET auto_explain.log_nested_statements = on",
        "SET auto_explain.log_level = notice",
    ):
        conn.execute(stmt)
    conn.execute(
        "SELECT id FROM study_embed.similar_questions(%s, %s, 10)", (BIG_USER, qid)
    ).fetchall()
    conn.execute("SET auto_explain.log_min_duration = -1")
    return next(n for n in notices if "nearest AS MATERIALIZED" in n)


def measure(url: str, ids: list[int], setup: tuple[str, ...], interleaved: bool = False) -> dict:
    """Search latency over `ids` (each question's 10 most similar of BIG_USER), and recall@10
    against an exact scan.  All queries are timed in one pass before any exact scan runs: an
    exact scan between two timed queries walks the whole table and leaves the next query
    colder than an app's would be.  `interleaved`: each exact scan right after its query, as
    this bench did until 2026-12-07 (kept to show the difference side by side)."""
    hits, total = 0, 0
    lat: list[float] = []
    got: dict[int, list[int]] = {}
    with psycopg.connect(url) as conn:
        for stmt in setup:  # rolled back below
            conn.execute(stmt)
        plan = inner_plan(conn, ids[0])

        def timed(qid: int) -> None:
            t0 = time.perf_counter()
            got[qid] = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM study_embed.similar_questions(%s, %s, 10)", (BIG_USER, qid)
                )
            ]
            lat.append((time.perf_counter() - t0) * 1000)

        def exact(qid: int) -> list[int]:
            conn.execute("SAVEPOINT exact")
            conn.execute("SET LOCAL enable_indexscan = off")
            conn.execute("SET LOCAL enable_bitmapscan = off")
            conn.execute("SET LOCAL enable_seqscan = on")
            want = [
                r[0]
                for r in conn.execute(
                    "SELECT o.id FROM study_questions o, study_questions s WHERE s.id = %s"
                    " AND o.user_id = s.user_id AND o.id <> s.id AND o.deleted_at IS NULL"
                    " AND o.embedding IS NOT NULL ORDER BY o.embedding <=> s.embedding LIMIT 10",
                    (qid,),
                )
            ]
            conn.execute("ROLLBACK TO SAVEPOINT exact")
            return want

        wanted: dict[int, list[int]] = {}
        for qid in ids:
            timed(qid)
            if interleaved:
                wanted[qid] = exact(qid)
        for qid in ids:
            want = wanted[qid] if qid in wanted else exact(qid)
            hits += len(set(got[qid]) & set(want))
            total += len(want)
        conn.rollback()
    path = (
        "HNSW index"
        if "embedding_hnsw" in plan
        else "per-user B-tree, exact"
        if "user_topic" in plan
        else "table scan, exact"
    )
    lat.sort()
    return {
        "median_ms": statistics.median(lat),
        "p95_ms": lat[int(len(lat) * 0.95) - 1],
        "recall_at_10": hits / total,
        "path": path,
    }


MODES = {
    "app indexes, planner's choice": (),
    "no per-user index": ("DROP INDEX study_questions_user_topic",),
    "HNSW forced": (
        "DROP INDEX study_questions_user_topic",
        "SET LOCAL enable_seqscan = off",
        "SET LOCAL enable_sort = off",
    ),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args()
    with scratch_database(DIM, settings="-c shared_buffers=2GB", model=MODEL) as (_, url):
        load(url, args.rows, big_user_rows=int(args.rows * 0.009))
        with psycopg.connect(url) as conn:
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM study_questions WHERE user_id = 0 ORDER BY random() LIMIT %s",
                    (args.queries,),
                )
            ]
            share = conn.execute("SELECT avg((user_id = 0)::int) FROM study_questions").fetchone()[
                0
            ]
        print(
            f"{args.rows} rows x {DIM} dims; the querying user owns {float(share):.2%};"
            f" {len(ids)} queries, k = 10"
        )
        results = {}
        for label, setup in MODES.items():
            measure(url, ids[:20], setup)  # warm the cache
            r = measure(url, ids, setup)
            results[label] = r
            print(
                f"{label:<31} {r['path']:<24} median {r['median_ms']:6.2f} ms"
                f"  p95 {r['p95_ms']:6.2f} ms  recall@10 {r['recall_at_10']:.3f}",
                flush=True,
            )
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
