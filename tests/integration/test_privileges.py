"""The listener's role may run the queue and nothing else (tested as that role)."""

from __future__ import annotations

import psycopg
import pytest
from pgvector.psycopg import register_vector

from ..conftest import url_for
from ..helpers import vector_for

LOGIN = "study_embed_listener_test"


@pytest.fixture
def listener_conn(db, bank):
    with psycopg.connect(url_for("postgres"), autocommit=True) as admin:
        if not admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (LOGIN,)).fetchone():
            admin.execute(
                psycopg.sql.SQL("CREATE ROLE {} LOGIN IN ROLE study_embed_listener").format(
                    psycopg.sql.Identifier(LOGIN)
                )
            )
    conn = psycopg.connect(url_for(db.info.dbname, user=LOGIN), autocommit=True)
    register_vector(conn)
    yield conn
    conn.close()


def test_listener_can_run_the_queue(bank, listener_conn):
    a, b, c = bank.insert(), bank.insert(), bank.insert()
    rows = listener_conn.execute(
        "SELECT id, claim_token, body FROM study_embed.claim(10)"
    ).fetchall()
    assert {r[0] for r in rows} == {a, b, c}
    (ia, ta, body_a), (ib, tb, _), (ic, tc, _) = sorted(rows)
    assert listener_conn.execute(
        "SELECT * FROM study_embed.complete(%s, %s, %s, 'test-model')",
        ([ia], [ta], [vector_for(body_a)]),
    ).fetchall() == [(a,)]
    assert listener_conn.execute(
        "SELECT * FROM study_embed.fail(%s, %s, %s, true)", ([ib], [tb], ["x"])
    ).fetchall() == [(b,)]
    assert listener_conn.execute(
        "SELECT * FROM study_embed.release(%s, %s)", ([ic], [tc])
    ).fetchall() == [(c,)]
    assert listener_conn.execute("SELECT study_embed.embedding_dimension()").fetchone()[0] == 1024
    assert listener_conn.execute("SELECT study_embed.tick()").fetchone()[0] is True
    assert (
        listener_conn.execute("SELECT requeued FROM study_embed.requeue_model('m2')").fetchone()[0]
        == 1
    )
    listener_conn.execute("SELECT study_embed.compact_counts()")
    statuses = dict(listener_conn.execute("SELECT status, live FROM study_embed.status").fetchall())
    assert statuses["stale"] == 1 and statuses["failed"] == 1 and statuses["none"] == 1
    assert listener_conn.execute("SELECT id FROM study_embed.failures").fetchall() == [(b,)]


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT question_text FROM study_questions",
        "SELECT * FROM users",
        "SELECT * FROM study_question_attempts",
        "SELECT * FROM study_topics",
        "UPDATE study_questions SET question_text = 'x'",
        "INSERT INTO users (email) VALUES ('evil@x')",
        "DELETE FROM study_questions",
        "SELECT study_embed.retry_failed()",
        "SELECT study_embed.recount()",
        "DELETE FROM study_embed.status_counts",
        "UPDATE study_embed.settings SET max_attempts = 100",
        "SELECT * FROM study_embed.schema_migrations",
        "SELECT * FROM study_embed.similar_questions(1, 1)",
        "SELECT * FROM study_embed.wrong_answer_clusters(1)",
        "SELECT study_embed._average_linkage(NULL, NULL, 0.5)",
        "SELECT * FROM study_embed.explanation_context(1, 1)",
        "SELECT * FROM study_embed.duplicate_pairs",
        "SELECT study_embed.dismiss_duplicate(1, 1, 2)",
        "SELECT study_embed.requeue_changed_text()",
        "SELECT study_embed._set_actor('complete')",
        "SET ROLE study_embed_pipeline",
        "UPDATE study_embed.duplicate_candidates SET dismissed_at = now()",
        "SELECT * FROM study_embed.search_questions(1, NULL)",
        "SELECT * FROM study_embed.adopt('BAAI/bge-m3')",
        "SELECT * FROM study_embed.adopted_source",
        "SELECT * FROM study_embed.adoption",
    ],
)
def test_listener_cannot_touch_anything_else(bank, listener_conn, statement):
    bank.insert()
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        listener_conn.execute(statement)
