"""`make bench`: the pipeline measured against its targets.

    .venv/bin/python bench/run.py [--full] [--json PATH]

Starts its own throwaway PostgreSQL clusters (nothing else needs to run), loads synthetic but
realistic rows (Korean and English texts, 1,000 users, 5,000 topics), runs a loopback embedding
server whose cost per text can be set (zero here: the pipeline's ceiling), and prints one table;
the figures also go to a JSON file.  Each figure is a median over repeated runs, with min and max.
Quick mode takes a few minutes; --full, with its 1,000,000-row drain, about 15 minutes.
Benchmarks are not tests: nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import adoption as adoption_bench
import cpu_per_row as cpu_bench
import faults as faults_bench
import generations as generations_bench
import partitions as partitions_bench
import psycopg
import scale_out as scale_bench
import search as search_bench
import writers as writers_bench
from common import LOAD_MANY, ROOT, add_users, free_port, scratch_database, settled_cluster_cpu

from study_embed_dev.embed_server import EmbedServer

QUICK = {
    "drain_rows": 20_000,
    "drain_configs": [(10, 2), (100, 2), (100, 4)],
    "repeats": 2,
    "indexed_rows": 4_000,
    "fresh_samples": 30,
    "load_seconds": 10,
    "claim_sizes": [10_000, 100_000],
    "search_rows": 20_000,
    "search_queries": 50,
    "scaling_drain": [10_000, 20_000],
    "writer_rounds": 2,
    "writer_seconds": 3,
    "writer_clients": [1, 4, 8],
    "outage_s": 20,
    "adoption_rows": 100_000,
    "budget_rows": 5_000,
    "generation_rows": 20_000,
    "cpu_rows": 20_000,
    "cpu_configs": [(100, 1), (200, 2), (500, 2), (500, 4)],
    "cpu_repeats": 1,
    "scale_rows": 20_000,
    "scale_listeners": [1, 2, 4, 8],
    "partition_rows": 200_000,
}
FULL = {
    "drain_rows": 20_000,
    "drain_configs": [(10, 1), (10, 2), (50, 2), (100, 2), (200, 2), (100, 4)],
    "repeats": 3,
    "indexed_rows": 20_000,
    "fresh_samples": 100,
    "load_seconds": 30,
    "claim_sizes": [10_000, 100_000, 1_000_000],
    "search_rows": 100_000,
    "search_queries": 100,
    "scaling_drain": [10_000, 100_000, 1_000_000],
    "writer_rounds": 3,
    "writer_seconds": 5,
    "writer_clients": [1, 4, 8],
    "outage_s": 40,
    "adoption_rows": 100_000,
    "budget_rows": 20_000,
    "generation_rows": 100_000,
    "cpu_rows": 20_000,
    "cpu_configs": [(100, 1), (200, 2), (500, 2), (500, 4), (1000, 2)],
    "cpu_repeats": 2,
    "scale_rows": 100_000,
    "scale_listeners": [1, 2, 4, 8],
    "partition_rows": 1_000_000,
}


def summary(values: list[float]) -> dict:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": len(values),
    }


def load_new_rows(url: str, n: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE study_question_attempts, study_questions CASCADE")
        add_users(conn)
        conn.execute(LOAD_MANY, {"n": n})
        conn.execute("VACUUM ANALYZE study_questions")


def drain(
    cluster,
    url: str,
    server: EmbedServer,
    batch: int,
    conc: int,
    rows: int,
    metrics_port: int | None = None,
) -> dict:
    """One `study-embed drain`; with `metrics_port`, its metrics endpoint is on and scraped
    every second while it runs (what Prometheus would do, five times more often)."""
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "EMBEDDING_URL": server.url,
        "LOG_LEVEL": "WARNING",
        "BATCH_SIZE": str(batch),
        "CONCURRENCY": str(conc),
    }
    if metrics_port:
        env["METRICS_PORT"] = str(metrics_port)
    pg0 = settled_cluster_cpu(cluster)
    t0 = time.monotonic()
    p = subprocess.Popen(
        [sys.executable, "-m", "study_embed.cli", "drain"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    rss: list[float] = []  # the listener's RSS, MB, every 0.05 s
    sampler = threading.Thread(target=_sample_rss, args=(p, rss), daemon=True)
    sampler.start()
    scrapes: list[int] = []
    if metrics_port:
        threading.Thread(target=_scrape, args=(p, metrics_port, scrapes), daemon=True).start()
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    sampler.join()
    p.returncode = os.waitstatus_to_exitcode(status)
    err = p.stderr.read().decode()
    if p.returncode != 0:
        sys.exit(f"drain failed ({p.returncode}):\n{err}")
    pg = settled_cluster_cpu(cluster) - pg0
    listener = usage.ru_utime + usage.ru_stime
    tenth = rss[len(rss) // 10 : len(rss) // 10 + 20] or rss
    return {
        "rows_per_s": rows / wall,
        "listener_cpu_ms_per_row": listener * 1000 / rows,
        # sampled VmRSS, not ru_maxrss: a child's ru_maxrss counts the image of this
        # (large) bench process it was forked from before exec
        "pg_cpu_ms_per_row": pg * 1000 / rows,
        "peak_rss_mb": max(rss, default=0.0),
        # RSS a tenth of the way in and at the end: equal when memory is flat in rows
        "rss_mb_at_10pct": max(tenth, default=0.0),
        "rss_mb_at_end": max(rss[-20:], default=0.0),
    }


def _scrape(proc: subprocess.Popen, port: int, out: list[int]) -> None:
    """GET /metrics every second while `proc` runs; `out` gets each answer's status."""
    while proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                r.read()
                out.append(r.status)
        except OSError:
            pass
        time.sleep(1.0)


def _sample_rss(proc: subprocess.Popen, out: list[float]) -> None:
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out.append(int(line.split()[1]) / 1024)
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.05)


def bench_drains(p: dict, server: EmbedServer, log) -> dict:
    out: dict = {}
    with scratch_database() as (cluster, url):
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP INDEX study_questions_embedding_hnsw")
        for batch, conc in p["drain_configs"]:
            runs = []
            for _ in range(p["repeats"]):
                load_new_rows(url, p["drain_rows"])
                runs.append(drain(cluster, url, server, batch, conc, p["drain_rows"]))
            key = f"{batch}x{conc}"
            out[key] = {k: summary([r[k] for r in runs]) for k in runs[0]}
            log(
                f"drain {p['drain_rows']} rows, no vector index, batch {batch} x {conc}: "
                f"{out[key]['rows_per_s']['median']:.0f} rows/s"
            )
        for n in p["scaling_drain"]:
            load_new_rows(url, n)
            r = drain(cluster, url, server, 100, 4, n)
            out[f"scaling_{n}"] = r
            log(
                f"scaling: drain {n} rows: {r['rows_per_s']:.0f} rows/s, "
                f"RSS {r['rss_mb_at_10pct']:.0f} MB a tenth of the way in, "
                f"{r['rss_mb_at_end']:.0f} MB at the end, peak {r['peak_rss_mb']:.0f} MB"
            )
    return out


def bench_metrics_cost(p: dict, server: EmbedServer, log) -> dict:
    """The metrics endpoint's cost on the drain ceiling: batch 100 x 2 with the endpoint off and
    on (scraped every second), in pairs whose order alternates (a table that grows dead rows
    run after run would otherwise favour whichever goes first)."""
    out: dict = {}
    runs: dict[str, list[dict]] = {"metrics_off": [], "metrics_on": []}
    with scratch_database() as (cluster, url):
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP INDEX study_questions_embedding_hnsw")
        for i in range(2 * p["repeats"]):
            order = ["metrics_off", "metrics_on"] if i % 2 == 0 else ["metrics_on", "metrics_off"]
            for key in order:
                load_new_rows(url, p["drain_rows"])
                port = free_port() if key == "metrics_on" else None
                runs[key].append(drain(cluster, url, server, 100, 2, p["drain_rows"], port))
    for key, rs in runs.items():
        out[key] = {k: summary([r[k] for r in rs]) for k in rs[0]}
    log(
        "drain 100 x 2 without / with the metrics endpoint (scraped every second): "
        f"{out['metrics_off']['rows_per_s']['median']:.0f} / "
        f"{out['metrics_on']['rows_per_s']['median']:.0f} rows/s"
    )
    return out


def bench_indexed(p: dict, server: EmbedServer, log) -> dict:
    """With the HNSW index in place, against the raw indexed-insert rate of the same machine:
    a plain INSERT ... SELECT of the very vectors the drain wrote, into a table with the same
    HNSW index (m 16, ef_construction 64), starting empty as the drain's did, from one backend
    and from two at once (the drain writes from CONCURRENCY backends)."""
    out: dict = {}
    with scratch_database() as (cluster, url):
        for batch, conc in [(10, 2), (100, 2)]:
            load_new_rows(url, p["indexed_rows"])
            r = drain(cluster, url, server, batch, conc, p["indexed_rows"])
            out[f"indexed_{batch}x{conc}"] = r
            log(
                f"drain {p['indexed_rows']} rows with the HNSW index, batch {batch} x {conc}: "
                f"{r['rows_per_s']:.0f} rows/s"
            )
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE drained AS SELECT row_number() OVER (ORDER BY"
                " embedding_updated_at, id) AS i, embedding AS v FROM study_questions"
            )
            conn.execute("CREATE TABLE raw_insert (id bigserial PRIMARY KEY, v vector(1024))")
            conn.execute(
                "CREATE INDEX ON raw_insert USING hnsw (v vector_cosine_ops)"
                " WITH (m = 16, ef_construction = 64)"
            )
        n = p["indexed_rows"]
        for backends in (1, 2):
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("TRUNCATE raw_insert")

            def insert(part: int, of: int) -> None:
                with psycopg.connect(url, autocommit=True) as c:
                    c.execute(
                        "INSERT INTO raw_insert (v) SELECT v FROM drained"
                        " WHERE i <= %s AND i %% %s = %s ORDER BY i",
                        (n, of, part),
                    )

            t0 = time.monotonic()
            threads = [threading.Thread(target=insert, args=(k, backends)) for k in range(backends)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            rate = n / (time.monotonic() - t0)
            out[f"raw_indexed_insert_{backends}_backend_rows_per_s"] = rate
            log(
                f"raw INSERT of the same vectors into an HNSW-indexed table, {backends} "
                f"backend(s): {rate:.0f} rows/s"
            )
        raw = out["raw_indexed_insert_2_backend_rows_per_s"]
        out["raw_indexed_insert_rows_per_s"] = raw
        for key in ("indexed_10x2", "indexed_100x2"):
            log(f"{key}: {out[key]['rows_per_s'] / raw:.0%} of the raw rate with as many backends")
        # the recommended backfill: drain without the index, then build it in one go
        load_new_rows(url, p["indexed_rows"])
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP INDEX study_questions_embedding_hnsw")
        t0 = time.monotonic()
        drain(cluster, url, server, 100, 4, p["indexed_rows"])
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SET maintenance_work_mem = '1GB'")
            conn.execute(
                "CREATE INDEX study_questions_embedding_hnsw ON study_questions"
                " USING hnsw (embedding vector_cosine_ops)"
                " WHERE deleted_at IS NULL AND embedding IS NOT NULL"
            )
        rate = p["indexed_rows"] / (time.monotonic() - t0)
        out["backfill_drop_drain_rebuild_rows_per_s"] = rate
        log(
            f"backfill of {p['indexed_rows']} rows: drop index, drain, CREATE INDEX: "
            f"{rate:.0f} rows/s ({rate / raw:.1f}x the raw indexed-insert rate)"
        )
    return out


def bench_freshness(p: dict, server: EmbedServer, log) -> dict:
    """Commit of an INSERT (or a content UPDATE) to `ready`, from the rows' own timestamps."""
    out: dict = {}
    with scratch_database() as (_, url):
        with psycopg.connect(url, autocommit=True) as conn:
            add_users(conn)
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "EMBEDDING_URL": server.url,
            "LOG_LEVEL": "WARNING",
            "POLL_INTERVAL": "3600",
        }
        listener = subprocess.Popen(
            [sys.executable, "-m", "study_embed.cli", "listen"], env=env, stderr=subprocess.DEVNULL
        )
        try:
            time.sleep(3)
            with psycopg.connect(url, autocommit=True) as conn:

                def insert_one(i: int) -> None:
                    conn.execute(
                        LOAD_MANY.replace("generate_series(1, %(n)s) g", "(SELECT %(n)s AS g) s"),
                        {"n": i},
                    )

                def latencies(kind: str) -> list[float]:
                    col = "created_at" if kind == "insert" else "updated_at"
                    rows = conn.execute(
                        f"SELECT extract(epoch FROM embedding_updated_at - {col}) FROM"
                        " study_questions WHERE embedding_status = 'ready' AND"
                        f" embedding_updated_at > {col}"
                    ).fetchall()
                    return sorted(float(r[0]) for r in rows)

                for i in range(p["fresh_samples"]):  # idle listener, one row at a time
                    insert_one(i)
                    time.sleep(0.2)
                time.sleep(1)
                idle = latencies("insert")
                for qid in [r[0] for r in conn.execute("SELECT id FROM study_questions")]:
                    conn.execute(
                        "UPDATE study_questions SET question_text = question_text || '?',"
                        " updated_at = clock_timestamp() WHERE id = %s",
                        (qid,),
                    )
                    time.sleep(0.2)  # one content edit at a time
                time.sleep(1)
                update = latencies("update")
                conn.execute("TRUNCATE study_questions CASCADE")
                t_end = time.monotonic() + p["load_seconds"]
                i = 0
                while time.monotonic() < t_end:  # 50 inserts a second
                    insert_one(i)
                    i += 1
                    time.sleep(max(0.0, 0.02 - 0.001))
                time.sleep(2)
                load = latencies("insert")
        finally:
            listener.terminate()
            listener.wait(30)
    for name, lat in (
        ("idle_insert", idle),
        ("content_update", update),
        ("at_50_rows_per_s", load),
    ):
        out[name] = {
            "p50_s": lat[len(lat) // 2],
            "p99_s": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
            "samples": len(lat),
        }
        log(
            f"freshness, {name}: p50 {out[name]['p50_s'] * 1000:.0f} ms, "
            f"p99 {out[name]['p99_s'] * 1000:.0f} ms ({len(lat)} rows)"
        )
    return out


def bench_claim(p: dict, log) -> dict:
    """Median time of claim(10) with 0.1 % of the table claimable (a small EMBEDDING_DIM: the
    claim reads no vector), each claim rolled back so that every one sees the same queue."""
    out: dict = {}
    for size in p["claim_sizes"]:
        with scratch_database(embedding_dim=8) as (_, url):
            with psycopg.connect(url, autocommit=True) as conn:
                add_users(conn)
                conn.execute("DROP INDEX study_questions_embedding_hnsw")
                with conn.transaction():
                    conn.execute("SET LOCAL session_replication_role = replica")
                    conn.execute(
                        """
                        INSERT INTO study_questions (user_id, study_topic_id, question_text,
                            choice_1, choice_2, choice_3, choice_4, correct_choice, embedding,
                            embedding_status, embedding_model, embedding_source_sha256,
                            embedding_due_at, embedding_queued_at)
                        SELECT 1 + g %% 1000, (1 + g %% 1000) * 5 - g %% 5, 'q' || g, 'a', 'b', 'c',
                               'd', 1, array_fill(1::real, ARRAY[8])::vector, 'ready', 'm',
                               study_embed.text_sha256(study_embed.render_question(
                                   'q' || g, 'a', 'b', 'c', 'd')), NULL, NULL
                        FROM generate_series(1, %s) g""",
                        (size - size // 1000,),
                    )
                conn.execute("SELECT study_embed.recount()")
                conn.execute(LOAD_MANY, {"n": size // 1000})
                conn.execute("VACUUM ANALYZE study_questions")
                times = []
                for _ in range(300):
                    with conn.transaction(force_rollback=True):
                        t0 = time.perf_counter()
                        rows = conn.execute("SELECT * FROM study_embed.claim(10)").fetchall()
                        times.append((time.perf_counter() - t0) * 1000)
                        assert len(rows) == 10
        out[str(size)] = summary(times[50:])
        log(
            f"claim(10) at {size} rows, {size // 1000} claimable: "
            f"median {out[str(size)]['median']:.2f} ms"
        )
    sizes = p["claim_sizes"]
    out["ratio_largest_to_10k"] = out[str(sizes[-1])]["median"] / out[str(sizes[0])]["median"]
    return out


def bench_search(p: dict, log) -> dict:
    out = {}
    with scratch_database(
        search_bench.DIM, settings="-c shared_buffers=2GB", model=search_bench.MODEL
    ) as (_, url):
        search_bench.load(url, p["search_rows"], big_user_rows=int(p["search_rows"] * 0.009))
        with psycopg.connect(url) as conn:
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM study_questions WHERE user_id = 0 ORDER BY random() LIMIT %s",
                    (p["search_queries"],),
                )
            ]
        for label, setup in list(search_bench.MODES.items())[:2]:
            search_bench.measure(url, ids[:10], setup)
            r = search_bench.measure(url, ids, setup)
            out[label] = r
            log(
                f"search {p['search_rows']} x 1024, user owns 0.9 %, {label}: {r['path']}, "
                f"p50 {r['median_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms, "
                f"recall@10 {r['recall_at_10']:.3f}"
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="the full run (about 15 minutes)")
    ap.add_argument(
        "--json",
        default=None,
        help="where to write the figures (default bench/results/<mode>.json)",
    )
    ap.add_argument(
        "--cost-ms-per-text",
        type=float,
        default=0.0,
        help="the embedding server's cost per text (default 0: the pipeline's ceiling)",
    )
    args = ap.parse_args()
    p = FULL if args.full else QUICK
    mode = "full" if args.full else "quick"
    started = time.monotonic()
    lock = threading.Lock()

    def log(msg: str) -> None:
        with lock:
            print(f"[{time.monotonic() - started:6.0f}s] {msg}", file=sys.stderr, flush=True)

    machine = {
        "cpus": os.cpu_count(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
    }
    log(f"make bench ({mode}) on {machine['cpus']} CPUs ({machine['cpu']})")
    server = EmbedServer(dim=1024)
    server.constant = True  # pre-encoded vectors: no server CPU to speak of
    server.cost_per_text = args.cost_ms_per_text / 1000
    results = {
        "mode": mode,
        "machine": machine,
        "params": p,
        "cost_ms_per_text": args.cost_ms_per_text,
    }
    try:
        results["writers"] = writers_bench.run(
            p["writer_rounds"], p["writer_seconds"], p["writer_clients"], log
        )
        results["drain"] = bench_drains(p, server, log)
        results["drain"].update(bench_metrics_cost(p, server, log))
        results["indexed"] = bench_indexed(p, server, log)
        results["freshness"] = bench_freshness(p, server, log)
        results["claim"] = bench_claim(p, log)
        results["search"] = bench_search(p, log)
        results["faults"] = faults_bench.run(p["outage_s"], p["budget_rows"], log)
        results["adoption"] = adoption_bench.run(p["adoption_rows"], log)
        results["generations"] = generations_bench.run(
            p["generation_rows"], p["search_queries"], log
        )
        results["cpu_per_row"] = cpu_bench.run(
            p["cpu_rows"], p["cpu_configs"], cpu_bench.BASELINES, p["cpu_repeats"], log
        )
        results["scale_out"] = scale_bench.run(
            p["scale_rows"], p["scale_listeners"], batch=8, concurrency=1, delay=0.02, log=log
        )
        results["partitions"] = partitions_bench.run(p["partition_rows"], [1, 8, 64, 256], 5, log)
    finally:
        server.stop()
    results["bench_cpu_s"] = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    path = Path(args.json or ROOT / "bench" / "results" / f"{mode}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str))
    print(table(results))
    print(f"\nfigures: {path}; took {time.monotonic() - started:.0f} s")


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


WRITER_TARGETS = {
    "insert": ("<= +25 %", "<= +11 %"),
    "update correct_choice": ("<= +25 %, >= 90 % HOT", "<= +11 %"),
    "update question_text": ("<= +100 %", "<= +11 %"),
}


def writer_rows(wr: dict) -> list[tuple[str, str, str]]:
    """Time per statement against the seed's table (seed tps / ours - 1; <= +11 % is >= 90 %
    of its throughput), HNSW inserts per event, wrong_answer_clusters."""
    rows = []
    for key, v in wr["statements"].items():
        name, clients = key.split(", ")
        single = clients.startswith("1 ")
        hot = v["ours"]["hot_share"]
        rows.append(
            (
                f"writers: {key}, seed / study-embed tps",
                f"{v['seed']['tps']:.0f} / {v['ours']['tps']:.0f} = {v['overhead']:+.0%}"
                + (
                    f", HOT {hot:.0%} (seed {v['seed']['hot_share']:.0%})"
                    if hot is not None
                    else ""
                ),
                WRITER_TARGETS[name][0 if single else 1],
            )
        )
    for label, v in wr["graph_inserts"].items():
        rows.append((f"HNSW inserts per row: {label}", f"{v:.2f}", ""))
    for n, ms in wr["clusters_ms"].items():
        rows.append(
            (
                f"wrong_answer_clusters, {n} recent wrong answers, ms",
                f"{ms:.0f}",
                "<= 50" if n.startswith("500") else "",
            )
        )
    return rows


def fault_rows(fa: dict) -> list[tuple[str, str, str]]:
    """Seconds from the embedding server's return to ready rows, per outage shape; the budget
    backfill; from SIGTERM to exit."""
    down, b = fa["shutdown"], fa["budget"]

    def s(x: float | None) -> str:
        return "never (120 s)" if x is None else f"{x:.1f}"

    rows = [
        (
            f"outage {o['outage_s']:.0f} s, {shape}: s to all ready after the return; failed; "
            "/readyz during",
            f"{s(o['all_ready_s'])}; {o['rows_failed']}; {o['readyz_during']}",
            "<= 5; 0; 503",
        )
        for shape, o in fa["outages"].items()
    ]
    rows.append(
        (
            f"backfill {b['rows']:,} rows, {b['rpm']} req/min and {b['tpm']:,} tokens/min: "
            "token budget used; 429s; failed",
            f"{b['token_budget_used']:.1%}; {b['rate_limited']} of {b['requests']} "
            f"({b['rate_limited_share']:.1%}); {b['failed']}",
            ">= 90 %; < 1 %; 0",
        )
    )
    rows.append(
        (
            "SIGTERM, PostgreSQL down, SHUTDOWN_TIMEOUT=3: s to exit",
            s(down["exit_after_s"]),
            "<= 3 + 5",
        )
    )
    return rows


def adoption_rows(a: dict) -> list[tuple[str, str, str]]:
    """Adopting a bank the seed's worker embedded, while an app writes and searches."""
    before, during = a["app_before"], a["app_during"]
    return [
        (
            f"adopt {a['rows']:,} ready rows of the seed's worker: migrate s, adopted, "
            "embedding requests after",
            f"{a['migrate_s']:.1f}, {a['adopted']:,}, {a['embedding_requests']}",
            "< 60 s, all, 0",
        ),
        (
            "  the app's slowest statement / p99, ms: while migrate runs (the 10 s before)",
            f"{during['max_ms']:.0f} / {during['p99_ms']:.0f} "
            f"({before['max_ms']:.0f} / {before['p99_ms']:.0f})",
            "< 1,000",
        ),
    ]


def generation_rows(g: dict, during: dict) -> list[tuple[str, str, str]]:
    """A model change on the search bench's bank; the app's writes during one (writers)."""
    before, rounds = g["search_before"], g["rounds"]

    def span(key: str, fmt: str = "{:.0f}") -> str:
        values = [x[key] for x in rounds]
        return " / ".join(fmt.format(v) for v in values)

    rows = [
        (
            f"model change, {g['rows']:,} rows: search p50 ms, recall@10: fresh bank; per "
            "round, after a plain drain / during the change",
            f"{before['median_ms']:.1f}, {before['recall_at_10']:.3f}; "
            + "; ".join(
                f"{x['search_outside']['median_ms']:.1f}, "
                f"{x['search_outside']['recall_at_10']:.3f} / "
                f"{x['search_during']['median_ms']:.1f}, {x['search_during']['recall_at_10']:.3f}"
                for x in rounds
            ),
            "<= 10, >= 0.95",
        ),
        (
            "  next generation's drain / a plain drain, rows/s (per round)",
            " ; ".join(
                f"{x['next_drain_rows_per_s']:.0f} / {x['plain_drain_rows_per_s']:.0f}"
                for x in rounds
            )
            + f" = {g['drain_ratio']:.0%}",
            ">= 80 %",
        ),
        (
            "  switch, s; longest wait of an app statement during it, s",
            f"{span('switch_s', '{:.2f}')}; {span('app_statement_max_wait_s', '{:.2f}')}",
            "< 1; < 1",
        ),
        (
            "  the next HNSW index, built CONCURRENTLY before the switch, s",
            span("index_build_s", "{:.1f}"),
            "",
        ),
    ]
    for key, v in during.items():
        rows.append(
            (
                f"  app writes during a change: {key}, tps outside / during",
                f"{v['outside']:.0f} / {v['during']:.0f} = {v['overhead']:+.0%}",
                "<= +25 %",
            )
        )
    return rows


def cpu_rows(c: dict | None) -> list[tuple[str, str, str]]:
    """CPU per embedded row by batch, earlier revisions beside this one, and the listener's
    start."""
    if not c:
        return [("CPU per row, before / now", "skipped: no baseline revision in this clone", "")]
    start = c["listener_start_s"]
    c = c["by_batch"]
    labels = list(c)

    def total(f: dict) -> str:
        return f"{f['listener_ms'] + f['pg_ms']:.3f} ({f['pg_ms']:.3f})"

    return [
        (
            f"CPU ms per row, listener + PostgreSQL (PostgreSQL), {cfg}: " + " / ".join(labels),
            " / ".join(total(c[label][cfg]) for label in labels),
            "half; PostgreSQL at 500 <= at 100" if cfg == "500x4" else "",
        )
        for cfg in c[labels[0]]
    ] + [
        (
            "listener CPU s of a drain with nothing to do (start): " + " / ".join(start),
            " / ".join(f"{v:.2f}" for v in start.values()),
            "",
        )
    ]


def scale_rows(s: dict) -> list[tuple[str, str, str]]:
    """Listeners that scale out: rows/s by listener processes, and the cores they took."""
    runs = [v for k, v in s.items() if k.isdigit()]
    one = runs[0]["rows_per_s"]
    return [
        (
            f"scale-out, {s['rows']:,} rows, server {s['delay_s'] * 1000:.0f} ms per request, "
            f"{r['listeners']} listener(s) of batch {s['batch']}: rows/s (x one), embedded "
            "twice; cores: listeners + PostgreSQL",
            f"{r['rows_per_s']:.0f} ({r['rows_per_s'] / one:.2f}x), {r['embedded_twice']}; "
            f"{r['cores_listeners']:.2f} + {r['cores_postgres']:.2f}",
            ">= 3.5x at 4, 0 twice" if r["listeners"] == 4 else "0 twice",
        )
        for r in runs
    ]


def partition_rows(s: dict) -> list[tuple[str, str, str]]:
    """The claim across a table partitioned by user (docs/beyond-one-primary.md)."""
    return [
        (
            f"claim of {s['batch']} over "
            + ("one table" if int(p) == 1 else f"{p} hash partitions")
            + f" of {s['rows']:,} rows "
            f"({s['queued']:,} waiting): joined by id / by (user_id, id) / the same, nested "
            "loop; INSERT through the parent",
            f"{f['by id']:.2f} / {f['by (user_id, id)']:.2f} / "
            f"{f[partitions_bench.NESTED]:.2f} ms; {f['insert']:.3f} ms",
            "(design note)",
        )
        for p, f in s["by_partitions"].items()
    ]


def table(r: dict) -> str:
    d, ix, fr, cl, se = r["drain"], r["indexed"], r["freshness"], r["claim"], r["search"]
    best_key = max(
        (k for k in d if not k.startswith(("scaling", "metrics"))),
        key=lambda k: d[k]["rows_per_s"]["median"],
    )
    best = d[best_key]
    seed = d.get("10x2") or d.get("10x1")
    cpu_best = best["listener_cpu_ms_per_row"]["median"] + best["pg_cpu_ms_per_row"]["median"]
    raw = ix["raw_indexed_insert_rows_per_s"]
    idx_best = max(ix["indexed_10x2"]["rows_per_s"], ix["indexed_100x2"]["rows_per_s"])
    sizes = [k for k in cl if k.isdigit()]
    search = next(iter(se.values()))

    def mm(x: dict, fmt: str = "{:.0f}") -> str:
        return f"{fmt.format(x['median'])} ({fmt.format(x['min'])}–{fmt.format(x['max'])})"

    rows = [
        ("figure", "measured: median (min–max)", "target"),
        ("drain, no vector index, batch 10 (seed), rows/s", mm(seed["rows_per_s"]), ""),
        (f"drain, no vector index, best ({best_key}), rows/s", mm(best["rows_per_s"]), ">= 2,000"),
        (
            "  CPU ms per row, listener + PostgreSQL",
            f"{cpu_best:.3f} ({best['listener_cpu_ms_per_row']['median']:.3f} + "
            f"{best['pg_cpu_ms_per_row']['median']:.3f})",
            "<= 0.5",
        ),
        (
            f"listener peak RSS, 20,000-row drain, batch 10 / {best_key}, MB",
            f"{seed['peak_rss_mb']['median']:.0f} / {best['peak_rss_mb']['median']:.0f}",
            "flat in rows",
        ),
        (
            "raw INSERT into HNSW-indexed table, 1 / 2 backends, rows/s",
            f"{ix['raw_indexed_insert_1_backend_rows_per_s']:.0f} / {raw:.0f}",
            "(reference)",
        ),
        (
            "drain with the HNSW index, best (2 backends), rows/s",
            f"{idx_best:.0f} = {idx_best / raw:.0%} of raw with 2",
            ">= 80 % of raw",
        ),
        (
            "backfill: drop index, drain, rebuild, rows/s",
            f"{ix['backfill_drop_drain_rebuild_rows_per_s']:.0f}",
            "(recommended)",
        ),
        (
            "freshness, idle, p50 / p99",
            f"{fr['idle_insert']['p50_s'] * 1000:.0f} / {fr['idle_insert']['p99_s'] * 1000:.0f} ms",
            "<= 200 / 1000 ms",
        ),
        (
            "freshness, content update, p50 / p99",
            f"{fr['content_update']['p50_s'] * 1000:.0f} / "
            f"{fr['content_update']['p99_s'] * 1000:.0f} ms",
            "<= 200 / 1000 ms",
        ),
        (
            "freshness, 50 inserts/s, p50 / p99",
            f"{fr['at_50_rows_per_s']['p50_s'] * 1000:.0f} / "
            f"{fr['at_50_rows_per_s']['p99_s'] * 1000:.0f} ms",
            "<= 200 / 1000 ms",
        ),
        *[
            (f"claim(10), {int(s):,} rows, 0.1 % claimable, ms", mm(cl[s], "{:.2f}"), "<= 2")
            for s in sizes
        ],
        (
            f"claim cost ratio {int(sizes[-1]):,} / {int(sizes[0]):,}",
            f"{cl['ratio_largest_to_10k']:.2f}",
            "<= 1.5",
        ),
        (
            f"search {r['params']['search_rows']:,} x 1024, per-user filter, p50 / p95 ms",
            f"{search['median_ms']:.1f} / {search['p95_ms']:.1f} ({search['path']})",
            "p50 <= 10",
        ),
        ("search recall@10", f"{search['recall_at_10']:.3f}", ">= 0.95"),
        *[
            (
                f"scaling: drain {int(k.split('_')[1]):,} rows (100x4), rows/s; RSS at 10 % / end",
                f"{d[k]['rows_per_s']:.0f}; {d[k]['rss_mb_at_10pct']:.0f} / "
                f"{d[k]['rss_mb_at_end']:.0f} MB",
                "RSS flat",
            )
            for k in d
            if k.startswith("scaling")
        ],
    ]
    rows += writer_rows(r["writers"])
    rows.append(
        (
            "drain rows/s, 100 x 2: metrics endpoint off / on (scraped every 1 s)",
            f"{mm(d['metrics_off']['rows_per_s'])} / {mm(d['metrics_on']['rows_per_s'])}",
            "no measurable cost",
        )
    )
    rows += fault_rows(r["faults"])
    rows += adoption_rows(r["adoption"])
    rows += generation_rows(r["generations"], r["writers"]["during_change"])
    rows += cpu_rows(r["cpu_per_row"])
    rows += scale_rows(r["scale_out"])
    rows += partition_rows(r["partitions"])
    w = [max(len(str(row[i])) for row in rows) for i in range(3)]
    lines = [f"| {a:<{w[0]}} | {b:<{w[1]}} | {c:<{w[2]}} |" for a, b, c in rows]
    lines.insert(1, f"|{'-' * (w[0] + 2)}|{'-' * (w[1] + 2)}|{'-' * (w[2] + 2)}|")
    return (
        f"\nmake bench ({r['mode']}), {r['machine']['cpus']} CPUs ({r['machine']['cpu']}), "
        "PostgreSQL and the listener on the same machine, embedder cost "
        f"{r['cost_ms_per_text']:g} ms per text\n\n" + "\n".join(lines)
    )


if __name__ == "__main__":
    main()
