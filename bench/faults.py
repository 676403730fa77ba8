"""The listener's fault handling, timed (printed by `make bench`):

- outages: the embedding server is out for OUTAGE seconds, in each shape of OUTAGES, while
  rows wait (the listener's backoff grows meanwhile); seconds from the server's return to the
  first and the last row `ready`, rows failed, the most attempts any row spent (0: an outage
  costs no attempt), and what /readyz said during it.
- budget: a backfill against a server that enforces requests and tokens per minute as OpenAI
  documents them; the share of the token budget used, the requests answered 429.
- shutdown: one batch in flight, PostgreSQL stopped, SIGTERM with SHUTDOWN_TIMEOUT=3; seconds
  from the signal to the process's exit.

Run alone: python bench/faults.py [--outage S] [--budget-rows N] [--only outages|budget]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import psycopg
from common import LOAD_MANY, add_users, free_port, scratch_database

from study_embed_dev.embed_server import EmbedServer

ROWS = 20


def _listener(url: str, server: EmbedServer, **extra: object) -> subprocess.Popen:
    env = {**os.environ, "DATABASE_URL": url, "EMBEDDING_URL": server.url, "LOG_LEVEL": "WARNING"}
    env.update({k: str(v) for k, v in extra.items()})
    return subprocess.Popen(
        [sys.executable, "-m", "study_embed.cli", "listen"], env=env, stderr=subprocess.DEVNULL
    )


def _insert(url: str, n: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        add_users(conn)
        conn.execute(LOAD_MANY, {"n": n})


def _wait(pred, timeout: float, every: float = 0.02) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic() - t0
        time.sleep(every)
    return None


OUTAGES = {
    "refused": "connection refused (the server process is down)",
    "503": "TEI with an unhealthy backend: 503 JSON on /embed and /health",
    "half_broken": "a half-broken server: 503 on /embed, /health 200",
    "proxy": "a reverse proxy with no upstream: 502 HTML on every route",
    "stall": "a stalled server: requests hang past EMBEDDING_TIMEOUT (15 s)",
}


def _readyz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def recovery(shape: str, outage: float, log) -> dict:
    """The server goes into `shape` for `outage` seconds while ROWS rows wait; seconds from
    its return to the first and the last row ready, rows failed, /readyz during it."""
    server = EmbedServer(dim=1024)
    port = free_port()
    try:
        with scratch_database() as (_, url):
            p = _listener(url, server, POLL_INTERVAL=2, METRICS_PORT=port)
            try:
                _wait(lambda: _readyz(port) == 200, 30)
                if shape == "refused":
                    server.stop()
                else:
                    server.mode = int(shape) if shape.isdigit() else shape
                _insert(url, ROWS)
                time.sleep(outage / 2)
                readyz_during = _readyz(port)
                time.sleep(outage / 2)
                if shape == "refused":
                    server.start()
                else:
                    server.mode = None
                with psycopg.connect(url, autocommit=True) as conn:

                    def count(status: str) -> int:
                        row = conn.execute(
                            "SELECT count(*) FROM study_questions WHERE embedding_status = %s",
                            (status,),
                        ).fetchone()
                        return row[0] if row else 0

                    first = _wait(lambda: count("ready") > 0, 120)
                    t_all = _wait(lambda: count("ready") == ROWS, 120)
                    last = None if first is None or t_all is None else first + t_all
                    readyz_after = _wait(lambda: _readyz(port) == 200, 30)
                    failed = count("failed")
                    row = conn.execute(
                        "SELECT max(embedding_attempts) FROM study_questions"
                    ).fetchone()
                    attempts = row[0] if row else None
            finally:
                p.terminate()
                p.wait(30)
    finally:
        server.mode = None
        server.stop()
    log(
        f"outage {shape} ({outage:.0f} s): all {ROWS} rows ready {last:.1f} s after the "
        f"server's return; failed {failed}; /readyz {readyz_during} during it"
        if last is not None
        else f"outage {shape} ({outage:.0f} s): rows not ready within 120 s of the return"
    )
    return {
        "shape": shape,
        "outage_s": outage,
        "first_ready_s": first,
        "all_ready_s": last,
        "rows_failed": failed,
        "readyz_during": readyz_during,
        "readyz_200_after_s": readyz_after,
        "max_attempts_spent": attempts,
    }


def budget_backfill(rows: int, rpm: int, tpm: int, log) -> dict:
    """A backfill of `rows` against a server that enforces `rpm` and `tpm` as OpenAI does
    (OpenAI protocol, its x-ratelimit-* headers and usage), the listener told the budget:
    the share of the token budget used over the drain, the requests answered 429, rows
    failed."""
    server = EmbedServer(dim=1024)
    server.constant = True
    server.set_budget(rpm=rpm, tpm=tpm)
    try:
        with scratch_database() as (_, url):
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("DROP INDEX study_questions_embedding_hnsw")
            _insert(url, rows)
            env = {
                **os.environ,
                "DATABASE_URL": url,
                "EMBEDDING_URL": server.url,
                "EMBEDDING_API": "openai",
                "EMBEDDING_RPM": str(rpm),
                "EMBEDDING_TPM": str(tpm),
                "BATCH_SIZE": "100",
                "CONCURRENCY": "2",
                "LOG_LEVEL": "WARNING",
            }
            tokens0 = server.tokens_served
            t0 = time.monotonic()
            r = subprocess.run(
                [sys.executable, "-m", "study_embed.cli", "drain"],
                env=env,
                capture_output=True,
                text=True,
            )
            minutes = (time.monotonic() - t0) / 60
            with psycopg.connect(url) as conn:
                row = conn.execute(
                    "SELECT count(*) FILTER (WHERE embedding_status = 'ready'),"
                    " count(*) FILTER (WHERE embedding_status = 'failed') FROM study_questions"
                ).fetchone()
                ready, failed = row if row else (0, 0)
    finally:
        server.stop()
    requests = len(server.requests)
    used = (server.tokens_served - tokens0) / (tpm * minutes)
    out = {
        "rows": rows,
        "rpm": rpm,
        "tpm": tpm,
        "exit": r.returncode,
        "minutes": round(minutes, 2),
        "ready": ready,
        "failed": failed,
        "requests": requests,
        "rate_limited": server.rate_limited,
        "rate_limited_share": server.rate_limited / max(requests, 1),
        "token_budget_used": used,
        "request_budget_used": requests / (rpm * minutes),
    }
    log(
        f"backfill of {rows} rows under {rpm} requests/min and {tpm} tokens/min: "
        f"{minutes:.1f} min, {used:.1%} of the token budget, {server.rate_limited} of "
        f"{requests} requests answered 429, {failed} failed, exit {r.returncode}"
    )
    return out


def shutdown_with_database_down(log) -> dict:
    server = EmbedServer(dim=1024)
    try:
        with scratch_database() as (cluster, url):
            p = _listener(url, server, SHUTDOWN_TIMEOUT=3, BATCH_SIZE=5, CONCURRENCY=1)
            try:
                _wait(lambda: len(server.requests) >= 1, 30)
                server.delay = 60  # the next batch stays in flight
                _insert(url, 10)
                _wait(lambda: len(server.requests) >= 2, 30)
                cluster.stop("immediate")
                t0 = time.monotonic()
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(120)
                    seconds: float | None = time.monotonic() - t0
                except subprocess.TimeoutExpired:
                    seconds = None
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
    finally:
        server.delay = 0
        server.stop()
    log(
        f"SIGTERM with PostgreSQL down (SHUTDOWN_TIMEOUT=3): exited after {seconds:.1f} s"
        if seconds is not None
        else "SIGTERM with PostgreSQL down: still running after 120 s"
    )
    return {"shutdown_timeout_s": 3, "exit_after_s": seconds}


def run(outage: float, budget_rows: int, log) -> dict:
    return {
        "outages": {shape: recovery(shape, outage, log) for shape in OUTAGES},
        "budget": budget_backfill(budget_rows, 600, 300_000, log),
        "shutdown": shutdown_with_database_down(log),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--outage", type=float, default=40)
    ap.add_argument("--budget-rows", type=int, default=20_000)
    ap.add_argument("--only", choices=("outages", "budget"), default=None)
    args = ap.parse_args()
    t0 = time.monotonic()

    def log(m: str) -> None:
        print(f"[{time.monotonic() - t0:5.0f}s] {m}", file=sys.stderr, flush=True)

    if args.only == "outages":
        print({shape: recovery(shape, args.outage, log) for shape in OUTAGES})
    elif args.only == "budget":
        print(budget_backfill(args.budget_rows, 600, 300_000, log))
    else:
        print(run(args.outage, args.budget_rows, log))


if __name__ == "__main__":
    main()
