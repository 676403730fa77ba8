"""The listener against a real PostgreSQL and a real loopback embedding server."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import psycopg
import pytest
from pgvector.psycopg import register_vector

from study_embed_dev.embed_server import PROBE, EmbedServer
from study_embed_dev.localdb import scratch_database

from ..conftest import _free_port
from ..helpers import (
    TEST_MODEL,
    QuestionBank,
    assert_ready_with_current_text,
    legacy_ready,
    listener_env,
    listener_sleeps,
    render,
    run_cli,
    statuses,
    wait_until,
)

# -- the basics ------------------------------------------------------------------------------------


@pytest.mark.parametrize("api", ["tei", "openai", "ollama"])
def test_drain_embeds_the_exact_rendered_text_with_each_protocol(bank, db, db_url, server, api):
    ids = [
        bank.insert(f"질문 {i}?", (f"가{i}", "나", "다", "라"), subject="ignored", scope="ignored")
        for i in range(25)
    ]
    r = run_cli("drain", env=listener_env(db_url, server, EMBEDDING_API=api, BATCH_SIZE=7))
    assert r.returncode == 0, r.stderr
    assert "drain: embedded 25 rows" in r.stderr
    sent = [t for t in server.texts() if t != PROBE]
    assert sorted(sent) == sorted(
        render(f"질문 {i}?", f"가{i}", "나", "다", "라") for i in range(25)
    )
    assert all("ignored" not in t for t in sent)
    assert_ready_with_current_text(db, set(ids))
    assert {p for p, _ in server.requests} == {
        {"tei": "/embed", "openai": "/v1/embeddings", "ollama": "/api/embed"}[api]
    }
    model = db.execute("SELECT DISTINCT embedding_model FROM study_questions").fetchall()
    assert model == [("test-model",)]


def test_requests_respect_the_server_input_limit(bank, db_url, server):
    for _ in range(50):
        bank.insert()
    r = run_cli("drain", env=listener_env(db_url, server, BATCH_SIZE=50, EMBEDDING_MAX_INPUTS=32))
    assert r.returncode == 0, r.stderr
    sizes = [len(ts) for _, ts in server.requests if ts != [PROBE]]
    assert sizes == [32, 18]


def test_the_listener_keeps_to_the_request_size_the_server_names(bank, db, db_url, server):
    """TEI's OpenAI route refuses more than its --max-client-batch-size (32 by default) with a
    422 that names it; the OpenAI protocol asks for 128 by default: the listener is refused
    once, then keeps to the size named."""
    ids = [bank.insert() for _ in range(40)]
    server.max_batch = 8
    env = listener_env(db_url, server, EMBEDDING_API="openai", BATCH_SIZE=20, CONCURRENCY=1)
    r = run_cli("drain", env=env)
    assert r.returncode == 0, r.stderr
    sizes = [len(ts) for _, ts in server.requests if ts != [PROBE]]
    assert sizes == [20, 8, 8, 4, 8, 8, 4], sizes
    assert "refused a request for its size" in r.stderr
    assert_ready_with_current_text(db, set(ids))


def test_content_edit_is_reembedded_and_other_edits_are_not(bank, db, db_url, server):
    a, b = bank.insert("first"), bank.insert("second")
    env = listener_env(db_url, server)
    assert run_cli("drain", env=env).returncode == 0
    bank.update(a, choice_2="edited choice")
    bank.update(b, explanation="new explanation", correct_choice=4, subject="s", scope="sc")
    assert run_cli("drain", env=env).returncode == 0
    counts = server.text_counts()
    assert counts[bank.text(a)] == 1 and counts[bank.text(b)] == 1
    assert sum(n for t, n in counts.items() if t != PROBE) == 3
    assert_ready_with_current_text(db)


def test_edit_while_the_server_is_slow_never_ends_ready_with_the_old_vector(
    bank, db, db_url, server, spawn
):
    qid = bank.insert("before")
    server.delay = 1.5
    p = spawn("drain", env=listener_env(db_url, server))
    wait_until(lambda: any("before" in t for t in server.texts()), what="the request")
    bank.update(qid, question_text="after")
    assert p.wait(30) == 0
    # the vector of "before" came back after the edit: not stored; the drain, still running
    # while that batch was in flight, claimed the edited row and embedded "after"
    assert [t.split("\n")[0] for t in server.texts() if t != PROBE] == [
        "문제: before",
        "문제: after",
    ]
    assert_ready_with_current_text(db)


# -- faults ----------------------------------------------------------------------------------------


def test_sigkill_mid_batch_every_row_ready_after_the_lease(bank, db, db_url, server, spawn):
    ids = [bank.insert() for _ in range(12)]
    server.delay = 5
    p = spawn("listen", env=listener_env(db_url, server, LEASE_SECONDS=2, BATCH_SIZE=4))
    wait_until(lambda: len(server.requests) >= 2, what="a batch in flight")
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    assert statuses(db).get("pending", 0) > 0  # the claims died with the process
    server.delay = 0
    spawn("listen", env=listener_env(db_url, server, POLL_INTERVAL=0.5))
    wait_until(lambda: statuses(db) == {"ready": 12}, timeout=30, what="all ready")
    assert_ready_with_current_text(db, set(ids))


def test_postgres_restart_during_a_drain(server):
    with scratch_database(model=TEST_MODEL) as (cluster, url):
        with psycopg.connect(url, autocommit=True) as conn:
            bank = QuestionBank(conn)
            for _ in range(120):
                bank.insert()
        server.delay = 0.1
        p = subprocess.Popen(
            [sys.executable, "-m", "study_embed.cli", "drain"],
            env=listener_env(url, server, BATCH_SIZE=5, CONCURRENCY=1),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_until(lambda: len(server.requests) >= 5, what="the drain to get going")
        cluster.stop("fast")
        sent_before_restart = len(server.requests)
        time.sleep(1)
        cluster.start()
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert len(server.requests) > sent_before_restart  # it carried on afterwards
        with psycopg.connect(url) as conn:
            register_vector(conn)
            assert statuses(conn) == {"ready": 120}
            assert_ready_with_current_text(conn)


def test_server_down_then_back_no_row_fails(bank, db, db_url, server, spawn):
    env = listener_env(db_url, server, POLL_INTERVAL=0.5)
    p = spawn("listen", env=env)
    wait_until(lambda: len(server.requests) >= 1, what="the start-up probe")
    server.stop()
    ids = [bank.insert() for _ in range(20)]
    time.sleep(4)  # several attempts while it is down
    assert statuses(db).get("ready", 0) == 0
    server.start()
    wait_until(lambda: statuses(db) == {"ready": 20}, timeout=90, what="all ready")
    attempts = db.execute("SELECT max(embedding_attempts) FROM study_questions").fetchone()[0]
    assert attempts == 0
    p.terminate()
    _, err = p.communicate(timeout=30)
    assert "embedding server unavailable; batch given back" in err
    assert_ready_with_current_text(db, set(ids))


@pytest.mark.parametrize("status", [429, 500, 503])
def test_transient_status_gives_the_batch_back(bank, db, db_url, server, spawn, status):
    ids = [bank.insert() for _ in range(5)]
    p = spawn("listen", env=listener_env(db_url, server, POLL_INTERVAL=0.5))
    wait_until(lambda: len(server.requests) >= 1, what="the probe")
    server.mode = status
    bank.insert()
    wait_until(lambda: len(server.requests) >= 3, what="a failed batch")
    assert statuses(db).get("failed", 0) == 0
    server.mode = None
    wait_until(lambda: statuses(db) == {"ready": 6}, timeout=60, what="all ready")
    p.terminate()
    p.wait(30)
    assert_ready_with_current_text(db, set(ids))


def test_one_poison_row_the_others_become_ready(bank, db, db_url, server):
    good = [bank.insert(f"good {i}") for i in range(9)]
    bad = bank.insert("POISON pill")
    server.poison = {"POISON"}
    r = run_cli("drain", env=listener_env(db_url, server, BATCH_SIZE=10))
    assert r.returncode == 1  # a row is left failed
    assert_ready_with_current_text(db, set(good))
    row = bank.row(bad)
    assert row["embedding_status"] == "failed" and row["embedding"] is None
    assert "422" in row["embedding_last_error"] and "too long" in row["embedding_last_error"]
    assert row["embedding_due_at"] is None  # waits for an edit
    assert "1 row(s) are left failed" in r.stderr
    # the poison text was sent only while isolating it (log2(10) splits), the good ones once more
    assert server.text_counts()[bank.text(bad)] <= 5


@pytest.mark.parametrize(
    "mode,message",
    [
        ("nan", "NaN or infinity"),
        ("zero", "zero vector"),
    ],
)
def test_a_vector_that_cannot_be_stored_fails_its_row_only(bank, db, db_url, server, mode, message):
    ids = [bank.insert() for _ in range(3)]
    server.mode = mode  # the start-up probe is still answered correctly
    r = run_cli("drain", env=listener_env(db_url, server, BATCH_SIZE=3))
    assert r.returncode == 1, r.stderr
    rows = db.execute(
        "SELECT id, embedding_status, embedding IS NULL, embedding_last_error"
        " FROM study_questions ORDER BY id"
    ).fetchall()
    failed = [r for r in rows if r[1] == "failed"]
    assert len(failed) == 1, rows
    for _, _status, no_embedding, error in failed:
        assert no_embedding and message in error
    assert [r[1] for r in rows].count("ready") == len(ids) - 1


@pytest.mark.slow
def test_drain_stops_when_the_server_keeps_failing_and_spends_no_attempt(bank, db, db_url, server):
    for _ in range(4):
        bank.insert()
    server.mode = 503
    r = run_cli("drain", env=listener_env(db_url, server, BATCH_SIZE=2, DRAIN_GIVE_UP_AFTER=3))
    assert r.returncode == 1, r.stderr
    assert re.search(r"served no batch for [3-9] s \(DRAIN_GIVE_UP_AFTER=3\)", r.stderr), r.stderr
    assert statuses(db) == {"none": 4}
    assert db.execute("SELECT max(embedding_attempts) FROM study_questions").fetchone()[0] == 0


def test_dimension_mismatch_refuses_to_start_and_touches_nothing(bank, db, db_url):
    ids = [bank.insert() for _ in range(3)]
    small = EmbedServer(dim=768)
    try:
        r = run_cli("drain", env=listener_env(db_url, small))
        assert r.returncode == 2
        assert "768" in r.stderr and "vector(1024)" in r.stderr
        assert small.texts() == [PROBE]
    finally:
        small.stop()
    rows = db.execute(
        "SELECT embedding_status, embedding_claim_token FROM study_questions"
    ).fetchall()
    assert rows == [("none", None)] * len(ids)


def test_four_listeners_embed_each_content_version_exactly_once(bank, db, db_url, server, spawn):
    env = listener_env(db_url, server, POLL_INTERVAL=0.5, BATCH_SIZE=5, CONCURRENCY=2)
    procs = [spawn("listen", env=env) for _ in range(4)]
    wait_until(lambda: server.texts().count(PROBE) == 4, what="four listeners up")
    ids = [bank.insert() for _ in range(150)]
    wait_until(lambda: statuses(db) == {"ready": 150}, timeout=60, what="first versions")
    for qid in ids[:50]:
        bank.update(qid, question_text=f"second version of {qid}")
    wait_until(lambda: statuses(db) == {"ready": 150}, timeout=60, what="second versions")
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(30)
    counts = server.text_counts()
    del counts[PROBE]
    assert len(counts) == 200 and set(counts.values()) == {1}
    assert_ready_with_current_text(db)


def test_notify_wakes_an_idle_listener(bank, db, db_url, server, spawn):
    p = spawn(
        "listen", env=listener_env(db_url, server, POLL_INTERVAL=3600)
    )  # no polling to speak of
    wait_until(lambda: len(server.requests) >= 1, what="the probe")
    wait_until(lambda: listener_sleeps(db), what="it scanned, found nothing, and sleeps")
    qid = bank.insert("wake up")
    wait_until(lambda: bank.status(qid) == "ready", timeout=20, what="the NOTIFY to wake it")
    p.terminate()
    p.wait(30)


def test_an_idle_listener_folds_the_status_counts(bank, db, db_url, server, spawn):
    """Without pg_cron nothing else folds the counters' deltas: an idle listener does."""
    ids = [bank.insert() for _ in range(30)]
    deltas = db.execute("SELECT count(*) FROM study_embed.status_counts").fetchone()[0]
    assert deltas >= 30  # one per inserted row
    p = spawn("listen", env=listener_env(db_url, server, POLL_INTERVAL=3600))
    wait_until(lambda: all(bank.status(i) == "ready" for i in ids), what="the drain")
    wait_until(
        lambda: db.execute("SELECT count(*) FROM study_embed.status_counts").fetchone()[0] == 1,
        what="the counts folded",
    )
    assert db.execute("SELECT status, deleted, n FROM study_embed.status_counts").fetchall() == [
        ("ready", False, 30)
    ]
    p.terminate()
    p.wait(30)


def test_sigterm_finishes_or_gives_back_in_flight_rows(bank, db, db_url, server, spawn):
    for _ in range(20):
        bank.insert()
    server.delay = 2
    p = spawn("listen", env=listener_env(db_url, server, BATCH_SIZE=5, SHUTDOWN_TIMEOUT=0.5))
    wait_until(lambda: len(server.requests) >= 2, what="a batch in flight")
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    st = statuses(db)
    assert st.get("pending", 0) == 0, st  # nothing left waiting for a lease
    assert "giving back unfinished rows" in err


def test_reembed_queues_rows_of_another_model(bank, db, db_url, server):
    """Rows a listener from before generations stored under another model's name (served by
    nothing: search skips them) are queued again, keep their vector until replaced, and come
    back embedded by the served model."""
    legacy = [legacy_ready(bank, "old-model") for _ in range(3)]
    fresh = bank.insert()
    assert run_cli("drain", env=listener_env(db_url, server)).returncode == 0
    r = run_cli("reembed", env=listener_env(db_url, server))
    assert r.returncode == 0 and "queued 3 row(s)" in r.stderr, r.stderr
    assert statuses(db) == {"stale": 3, "ready": 1}
    assert (
        db.execute("SELECT count(*) FROM study_questions WHERE embedding IS NULL").fetchone()[0]
        == 0
    )
    assert run_cli("drain", env=listener_env(db_url, server)).returncode == 0
    assert db.execute("SELECT DISTINCT embedding_model FROM study_questions").fetchall() == [
        (TEST_MODEL,)
    ]
    assert_ready_with_current_text(db, {*legacy, fresh})


def test_reembed_with_another_model_than_the_served_one_is_refused(bank, db, db_url, server):
    bank.insert()
    r = run_cli("reembed", env=listener_env(db_url, server, EMBEDDING_MODEL="new-model"))
    assert r.returncode == 2
    assert f"serves model {TEST_MODEL}, not EMBEDDING_MODEL=new-model" in r.stderr
    assert "model begin new-model" in r.stderr
    assert statuses(db) == {"none": 1}


# -- the command line ------------------------------------------------------------------------------


def test_help_lists_every_setting():
    from study_embed.settings import SETTINGS

    top = subprocess.run(
        [sys.executable, "-m", "study_embed.cli", "--help"], capture_output=True, text=True
    ).stdout
    for s in SETTINGS:
        assert s.flag in top and s.env in top, s.env
    for command in ("listen", "drain"):
        out = subprocess.run(
            [sys.executable, "-m", "study_embed.cli", command, "--help"],
            capture_output=True,
            text=True,
        ).stdout
        for s in SETTINGS:
            if command in s.commands:
                assert s.flag in out and s.env in out, (command, s.env)


@pytest.mark.parametrize(
    "env,message",
    [
        ({"EMBEDDING_API": "grpc"}, "EMBEDDING_API='grpc': must be one of tei, openai, ollama"),
        ({"BATCH_SIZE": "0"}, "BATCH_SIZE='0': must be at least 1"),
        ({"EMBEDDING_TIMEOUT": "soon"}, "EMBEDDING_TIMEOUT='soon': must be a number"),
        ({"EMBEDDING_URL": "ftp://x"}, "must be an http(s) URL"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT='xml'"),
    ],
)
def test_bad_configuration_exits_2(db_url, server, env, message):
    r = run_cli("drain", env=listener_env(db_url, server, **env))
    assert r.returncode == 2 and message in r.stderr, r.stderr


def test_unreachable_server_at_drain_start_is_a_clear_error(bank, db_url):
    r = run_cli(
        "drain",
        env={
            **os.environ,
            "DATABASE_URL": db_url,
            "EMBEDDING_URL": f"http://127.0.0.1:{_free_port()}",
            "EMBEDDING_MODEL": TEST_MODEL,
        },
    )
    assert r.returncode == 1
    assert "does not answer correctly" in r.stderr and "ConnectError" in r.stderr


def test_status_command_shows_counts_and_errors(bank, db_url, server):
    bank.insert("POISON")
    bank.insert("fine")
    server.poison = {"POISON"}
    run_cli("drain", env=listener_env(db_url, server))
    r = run_cli("status", env=listener_env(db_url, server))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert any(ln.split()[:2] == ["ready", "1"] for ln in lines)
    assert any(ln.split()[:2] == ["failed", "1"] for ln in lines)
    assert "after an edit" in r.stdout and "too long" in r.stdout


def test_json_logs(bank, db_url, server):
    bank.insert()
    r = run_cli("drain", env=listener_env(db_url, server, LOG_FORMAT="json"))
    assert r.returncode == 0
    records = [json.loads(ln) for ln in r.stderr.splitlines() if ln.startswith("{")]
    batch = [rec for rec in records if rec["msg"] == "batch"]
    assert batch and batch[0]["rows"] == 1 and batch[0]["embedded"] == 1
    assert "embed_ms" in batch[0]


def test_unmigrated_database_is_a_clear_error(server, empty_database_url):
    r = run_cli("drain", env=listener_env(empty_database_url, server))
    assert r.returncode == 2 and "run `make migrate`" in r.stderr


def test_an_idle_listener_runs_the_near_duplicate_pass(bank, db, db_url, server, spawn):
    a = bank.insert("same question", ("a", "b", "c", "d"))
    b = bank.insert("same question", ("a", "b", "c", "d"))  # same text, same vector
    c = bank.insert("another question")
    p = spawn("listen", env=listener_env(db_url, server, POLL_INTERVAL=3600))
    wait_until(lambda: statuses(db) == {"ready": 3}, what="all ready")
    wait_until(
        lambda: db.execute("SELECT count(*) FROM study_embed.duplicate_queue").fetchone()[0] == 0,
        what="the duplicate pass",
    )
    pairs = db.execute(
        "SELECT question_id, duplicate_of FROM study_embed.duplicate_pairs"
    ).fetchall()
    assert pairs == [(a, b)] and c not in pairs[0]
    p.terminate()
    p.wait(30)
