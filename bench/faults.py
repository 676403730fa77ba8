"""Two timings behind the listener's fault handling (printed by `make bench`):

- recovery: the embedding server is down for OUTAGE seconds while rows wait (the listener's
  backoff grows meanwhile); seconds from the server's return to the first and the last row
  `ready`, and the most attempts any row spent (0: an outage costs no attempt).
- shutdown: one batch in flight, PostgreSQL stopped, SIGTERM with SHUTDOWN_TIMEOUT=3; seconds
  from the signal to the process's exit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psycopg
from common import LOAD_MANY, add_users, scratch_database

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


def recovery(outage: float, log) -> dict:
    server = EmbedServer(dim=1024)
    try:
        with scratch_database() as (_, url):
            p = _listener(url, server, POLL_INTERVAL=0.5)
            try:
                _wait(lambda: len(server.requests) >= 1, 30)
                server.stop()
                _insert(url, ROWS)
                time.sleep(outage)
                server.start()
                with psycopg.connect(url, autocommit=True) as conn:

                    def ready() -> int:
                        row = conn.execute(
                            "SELECT count(*) FROM study_questions WHERE embedding_status = 'ready'"
                        ).fetchone()
                        return row[0] if row else 0

                    first = _wait(lambda: ready() > 0, 120)
                    t_all = _wait(lambda: ready() == ROWS, 120)
                    last = None if first is None or t_all is None else first + t_all
                    row = conn.execute(
                        "SELECT max(embedding_attempts) FROM study_questions"
                    ).fetchone()
                    attempts = row[0] if row else None
            finally:
                p.terminate()
                p.wait(30)
    finally:
        server.stop()
    log(
        f"recovery after a {outage:.0f} s outage: first row ready {first:.1f} s after the "
        f"server's return, all {ROWS} after {last:.1f} s; most attempts spent {attempts}"
        if first is not None and last is not None
        else f"recovery after a {outage:.0f} s outage: rows not ready within 120 s"
    )
    return {
        "outage_s": outage,
        "first_ready_s": first,
        "all_ready_s": last,
        "max_attempts_spent": attempts,
    }


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


def run(outage: float, log) -> dict:
    return {"recovery": recovery(outage, log), "shutdown": shutdown_with_database_down(log)}
