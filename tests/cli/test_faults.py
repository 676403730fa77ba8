"""Operational faults, each tried from outside as an operator or a broken neighbour would cause
it: a statement_timeout, SIGTERM with PostgreSQL down, an outage of the embedding server in each
of its shapes (refused, 503 everywhere, 503 behind a healthy health route, a proxy's HTML, a
stall), a server's rate limit and budget, a proxy that answers 200 with HTML, numbers sent as
strings or booleans, NUL in a server's error message, a migration next to open transactions,
an unset DATABASE_URL."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import psycopg
import pytest
from psycopg import sql

from study_embed.embedders.base import HEALTH_PROBE_TEXT
from study_embed.migrate import Migrator
from study_embed.sqlfiles import sql_dir
from study_embed_dev.embed_server import PROBE, EmbedServer
from study_embed_dev.localdb import scratch_database

from ..conftest import _free_port, url_for
from ..helpers import (
    TEST_MODEL,
    QuestionBank,
    assert_ready_with_current_text,
    listener_env,
    run_cli,
    statuses,
    wait_until,
)


def _batches(server: EmbedServer) -> int:
    """Requests that carried rows (not the start-up or health probes)."""
    return sum(1 for _, texts in server.requests if texts not in ([PROBE], [HEALTH_PROBE_TEXT]))


# -- 1. a statement_timeout on the listener's role ---------------------------------------------


@pytest.mark.slow
def test_a_statement_timeout_does_not_wedge_the_listener(bank, db, server, spawn, login, connect):
    """The near-duplicate pass times out on every try (its table is locked by someone else):
    the listener logs it and goes on embedding; it does not retry the pass forever."""
    login("se_listener_timeout", "study_embed_listener")
    db.execute(
        sql.SQL(
            "ALTER ROLE se_listener_timeout IN DATABASE {} SET statement_timeout = '300ms'"
        ).format(sql.Identifier(db.info.dbname))
    )
    blocker = connect(autocommit=False)
    blocker.execute("LOCK TABLE study_embed.duplicate_candidates IN ACCESS EXCLUSIVE MODE")
    url = url_for(db.info.dbname, user="se_listener_timeout")
    p = spawn("listen", env=listener_env(url, server, POLL_INTERVAL=3600))
    first = bank.insert("first")
    wait_until(lambda: bank.status(first) == "ready", what="the first row")
    time.sleep(1.5)  # its near-duplicate pass has timed out by now
    second = bank.insert("second")
    wait_until(lambda: bank.status(second) == "ready", timeout=15, what="the second row")
    blocker.rollback()
    p.terminate()
    _, err = p.communicate(timeout=30)
    assert "near-duplicate pass failed" in err and "statement timeout" in err


# -- 3. SIGTERM while PostgreSQL is down -------------------------------------------------------


@pytest.mark.slow
def test_sigterm_with_the_database_down_ends_within_the_shutdown_timeout(server):
    with scratch_database(model=TEST_MODEL) as (cluster, url):
        p = subprocess.Popen(
            [sys.executable, "-m", "study_embed.cli", "listen"],
            env=listener_env(url, server, SHUTDOWN_TIMEOUT=3, BATCH_SIZE=5, CONCURRENCY=1),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_until(lambda: len(server.requests) >= 1, what="the start-up probe")
            server.delay = 60  # the next batch stays in flight
            with psycopg.connect(url, autocommit=True) as conn:
                bank = QuestionBank(conn)
                for _ in range(10):
                    bank.insert()
            wait_until(lambda: _batches(server) >= 1, what="a batch in flight")
            cluster.stop("immediate")
            p.send_signal(signal.SIGTERM)
            _, err = p.communicate(timeout=30)  # 3 s, then the give-back is bounded too
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        assert p.returncode == 0, err
        assert "they return when their lease expires" in err


# -- 5. recovery after an outage of the embedding server --------------------------------------


@pytest.mark.slow
def test_work_resumes_within_seconds_of_the_servers_return(bank, db, db_url, server, spawn):
    """Down long enough for the backoff to reach 16 s; back, rows are ready within seconds
    (the listener probes the server's health while it backs off), and no attempt was spent."""
    p = spawn("listen", env=listener_env(db_url, server, POLL_INTERVAL=0.5))
    wait_until(lambda: len(server.requests) >= 1, what="the start-up probe")
    server.stop()
    ids = [bank.insert() for _ in range(5)]
    time.sleep(16)
    assert statuses(db).get("ready", 0) == 0
    server.start()
    wait_until(lambda: statuses(db) == {"ready": 5}, timeout=6, what="ready soon after return")
    assert db.execute("SELECT max(embedding_attempts) FROM study_questions").fetchone()[0] == 0
    assert_ready_with_current_text(db, set(ids))
    p.terminate()
    p.wait(30)


@pytest.mark.slow
@pytest.mark.parametrize(
    "outage",
    [
        503,  # TEI with an unhealthy backend: 503 JSON on /embed and on /health
        "half_broken",  # 503 on /embed, /health still 200
        "proxy",  # a reverse proxy with no upstream: 502 HTML on every route
        "stall",  # requests hang past EMBEDDING_TIMEOUT
    ],
)
def test_every_shape_of_outage_ends_within_seconds_of_the_return(
    bank, db, db_url, server, spawn, outage
):
    """Rows wait through an outage long enough for the backoff to grow past 8 s; /readyz
    says 503 meanwhile; once the server is back every row is ready within seconds (the
    listener probes whatever the outage looked like), no row failed, no attempt was spent."""
    from .test_metrics import get

    port = _free_port()
    p = spawn(
        "listen",
        env=listener_env(db_url, server, POLL_INTERVAL=0.5, METRICS_PORT=port, EMBEDDING_TIMEOUT=2),
    )
    wait_until(lambda: get(port, "/readyz")[0] == 200, what="ready")
    server.mode = outage
    ids = [bank.insert() for _ in range(6)]
    wait_until(lambda: get(port, "/readyz")[0] == 503, timeout=10, what="not ready")
    time.sleep(12)
    assert statuses(db).get("ready", 0) == 0
    assert get(port, "/readyz")[0] == 503
    server.mode = None
    wait_until(lambda: statuses(db) == {"ready": 6}, timeout=8, what="ready soon after return")
    wait_until(lambda: get(port, "/readyz")[0] == 200, timeout=8, what="ready again")
    assert db.execute("SELECT max(embedding_attempts) FROM study_questions").fetchone()[0] == 0
    assert_ready_with_current_text(db, set(ids))
    p.terminate()
    p.wait(30)


@pytest.mark.slow
def test_drain_waits_out_rate_limits_and_finishes(bank, db, db_url, server):
    """A server that enforces 30 requests a minute and says only Retry-After when it refuses:
    `drain` is refused, waits as long as it is told, and embeds every row; a 429 spends no
    attempt and is no outage."""
    server.set_budget(rpm=30)
    server.limit_headers = False
    ids = [bank.insert() for _ in range(36)]
    r = run_cli(
        "drain",
        env=listener_env(
            db_url, server, BATCH_SIZE=2, EMBEDDING_MAX_INPUTS=1, DRAIN_GIVE_UP_AFTER=5
        ),
        timeout=180,
    )
    assert r.returncode == 0, r.stderr
    assert server.rate_limited >= 1
    assert statuses(db) == {"ready": 36}
    assert db.execute("SELECT max(embedding_attempts) FROM study_questions").fetchone()[0] == 0
    assert_ready_with_current_text(db, set(ids))
    assert "rate limited by the embedding server; the request waits" in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("told", ["settings", "headers"])
def test_a_listener_paces_itself_under_a_budget_instead_of_bouncing_off_it(
    bank, db, db_url, server, told
):
    """Budgets known (EMBEDDING_RPM/TPM, or the server's x-ratelimit-limit-* headers): the
    drain keeps under them and is never refused."""
    server.set_budget(rpm=60, tpm=2000)
    server.limit_headers = told == "headers"
    for i in range(24):
        bank.insert(f"문제 {i}: 광합성이 일어나는 세포 소기관은 무엇인가?")
    budget = {"EMBEDDING_RPM": 60, "EMBEDDING_TPM": 2000} if told == "settings" else {}
    r = run_cli(
        "drain",
        env=listener_env(
            db_url, server, EMBEDDING_API="openai", BATCH_SIZE=4, EMBEDDING_MAX_INPUTS=2, **budget
        ),
        timeout=180,
    )
    assert r.returncode == 0, r.stderr
    assert statuses(db) == {"ready": 24}
    assert server.rate_limited == 0


# -- 6. replies that are not what was asked for -------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["html", "bools"])
def test_unusable_replies_open_the_breaker_and_spend_no_attempt(
    bank, db, db_url, server, spawn, mode
):
    """A proxy answering 200 with an HTML page, or a server sending `true` where a number
    belongs: the batch is given back (no attempt counted, nothing stored), the listener backs
    off as in an outage, and everything is embedded once the server answers properly."""
    db.execute("UPDATE study_embed.settings SET max_attempts = 2")
    p = spawn("listen", env=listener_env(db_url, server, POLL_INTERVAL=0.5, BATCH_SIZE=3))
    wait_until(lambda: len(server.requests) >= 1, what="the start-up probe")
    server.mode = mode
    ids = [bank.insert() for _ in range(3)]
    wait_until(lambda: _batches(server) >= 3, timeout=30, what="three unusable replies")
    st = statuses(db)
    assert st.get("ready", 0) == 0 and st.get("failed", 0) == 0, st
    assert db.execute("SELECT max(embedding_attempts) FROM study_questions").fetchone()[0] == 0
    server.mode = None
    wait_until(lambda: statuses(db) == {"ready": 3}, timeout=90, what="all ready")
    assert_ready_with_current_text(db, set(ids))
    p.terminate()
    _, err = p.communicate(timeout=30)
    assert "embedding server unavailable; batch given back" in err


def test_a_nul_in_the_servers_error_message_is_recorded_without_it(bank, db_url, server):
    bad = bank.insert("POISON pill")
    server.poison = {"POISON"}
    server.poison_message = "bad input\x00 after the nul"
    r = run_cli("drain", env=listener_env(db_url, server))
    assert r.returncode == 1, r.stderr
    row = bank.row(bad)
    assert row["embedding_status"] == "failed"
    assert "bad input after the nul" in row["embedding_last_error"], row["embedding_last_error"]


# -- 7. migrate next to open transactions ------------------------------------------------------


def _changed_db_dir(tmp_path):
    """db/ with one byte changed in an idempotent file: migrate re-applies them all."""
    copy = tmp_path / "db"
    shutil.copytree(sql_dir(), copy)
    f = copy / "idempotent" / "050_status.sql"
    f.write_text(f.read_text() + "\n-- changed\n")
    return copy


@pytest.mark.slow
def test_migrate_behind_an_open_reader_never_blocks_reads(bank, db, db_url, tmp_path, connect):
    qid = bank.insert()
    reader = connect(autocommit=False)
    reader.execute("SELECT count(*) FROM study_questions")  # holds ACCESS SHARE
    done: list[object] = []
    t = threading.Thread(
        target=lambda: done.append(
            Migrator(db_url, cron=False, db_dir=_changed_db_dir(tmp_path), log=lambda m: None).run()
        )
    )
    t.start()
    try:
        probe = connect()
        probe.execute("SET statement_timeout = '5s'")
        for _ in range(10):  # while migrate runs: reads and writes go through
            assert probe.execute(
                "SELECT id FROM study_questions WHERE id = %s", (qid,)
            ).fetchone() == (qid,)
            probe.execute("UPDATE study_questions SET explanation = 'x' WHERE id = %s", (qid,))
            time.sleep(0.2)
    finally:
        t.join(60)
        reader.rollback()
    assert done and done[0].idempotent


@pytest.mark.slow
def test_migrate_behind_an_open_writer_waits_in_short_tries(bank, db, db_url, tmp_path, connect):
    """A writer holds its transaction open for 3 s: migrate gives way (lock_timeout) and tries
    again instead of queueing every other writer behind itself; it finishes afterwards."""
    qid = bank.insert()
    writer = connect(autocommit=False)
    writer.execute("UPDATE study_questions SET explanation = 'open' WHERE id = %s", (qid,))
    logs: list[str] = []
    done: list[object] = []
    t = threading.Thread(
        target=lambda: done.append(
            Migrator(db_url, cron=False, db_dir=_changed_db_dir(tmp_path), log=logs.append).run()
        )
    )
    t.start()
    probe = connect()
    probe.execute("SET statement_timeout = '5s'")
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # other writers are never stuck behind migrate
        probe.execute(
            "INSERT INTO study_questions (user_id, study_topic_id, question_text,"
            " choice_1, choice_2, choice_3, choice_4, correct_choice)"
            " VALUES (%s, %s, 'q', 'a', 'b', 'c', 'd', 1)",
            bank.new_user(),
        )
        time.sleep(0.2)
    writer.commit()
    t.join(60)
    assert done and done[0].idempotent
    assert any("lock" in m and "trying again" in m for m in logs), logs
    counts = dict(db.execute("SELECT status, live FROM study_embed.status").fetchall())
    assert counts["none"] == db.execute("SELECT count(*) FROM study_questions").fetchone()[0]


# -- 8. no DATABASE_URL in the installed package -----------------------------------------------


def test_an_unset_database_url_is_a_configuration_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    r = subprocess.run(
        [sys.executable, "-m", "study_embed.cli", "status"],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    assert "DATABASE_URL is not set" in r.stderr
    assert list(tmp_path.iterdir()) == []  # nothing created here
