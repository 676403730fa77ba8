"""The claim costs what the queue holds, not what the table holds: its plan on 100k rows."""

from __future__ import annotations

import re

import psycopg
import pytest

from study_embed_dev.rows import vector_index_built_after

from ..conftest import drop_database, fresh_database
from ..helpers import nested_plans

# one worker builds the module's bulk-loaded database (pytest-xdist --dist loadgroup)
pytestmark = pytest.mark.xdist_group("claim_plan_100k")

ROWS = 100_000
CLAIMABLE = 100  # 0.1 %


@pytest.fixture(scope="module")
def big_db():
    """100k ready rows and 100 waiting ones, at a small dimension (the claim reads no vector)."""
    name = "claim_plan_100k"
    url = fresh_database(name, embedding_dim=8)
    with psycopg.connect(url) as c:
        uid = c.execute("INSERT INTO users (email) VALUES ('big@x') RETURNING id").fetchone()[0]
        tid = c.execute(
            "INSERT INTO study_topics (user_id, name) VALUES (%s, 't') RETURNING id", (uid,)
        ).fetchone()[0]
        # Bulk-load rows that are already ready, as a restore would (triggers off and the
        # vector index built once afterwards, for speed; the CHECK constraints still hold them
        # to a consistent state).
        with vector_index_built_after(c):
            c.execute("SET LOCAL session_replication_role = replica")
            c.execute(
                """
            INSERT INTO study_questions (user_id, study_topic_id, question_text, choice_1,
                choice_2, choice_3, choice_4, correct_choice, embedding, embedding_status,
                embedding_model, embedding_source_sha256, embedding_updated_at, embedding_due_at,
                embedding_queued_at)
            SELECT %(uid)s, %(tid)s, 'q' || g, 'a', 'b', 'c', 'd', 1,
                   array_fill(g::real, ARRAY[8])::vector, 'ready', 'm',
                   study_embed.text_sha256(
                       study_embed.render_question('q' || g, 'a', 'b', 'c', 'd')),
                   now(), NULL, NULL
            FROM generate_series(1, %(n)s) g""",
                {"uid": uid, "tid": tid, "n": ROWS},
            )
            c.execute("RESET session_replication_role")
        c.execute("SELECT study_embed.recount()")
        c.execute(
            """
            INSERT INTO study_questions (user_id, study_topic_id, question_text, choice_1,
                choice_2, choice_3, choice_4, correct_choice)
            SELECT %s, %s, 'new ' || g, 'a', 'b', 'c', 'd', 1 FROM generate_series(1, %s) g""",
            (uid, tid, CLAIMABLE),
        )
        c.commit()
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("VACUUM ANALYZE study_questions")
    yield url
    drop_database(name)


def _claim_plan(url: str) -> str:
    """The real plan of the statement inside study_embed.claim()."""
    plans = nested_plans(url, "SELECT * FROM study_embed.claim(10)", expect_rows=10)
    return next(p for p in plans if "FOR UPDATE SKIP LOCKED" in p)


def test_claim_uses_the_queue_index_on_100k_rows(big_db):
    with psycopg.connect(big_db) as c:
        assert c.execute("SELECT count(*) FROM study_questions").fetchone()[0] == ROWS + CLAIMABLE
    plan = _claim_plan(big_db)
    print(plan)
    assert "Seq Scan" not in plan
    lines = plan.splitlines()
    at = next(
        i
        for i, ln in enumerate(lines)
        if "Index Scan using study_questions_embedding_queue on study_questions" in ln
    )
    # the scan that finds the work reads a handful of pages, not the table (100k rows span
    # well over a thousand pages)
    buffers = next(ln for ln in lines[at:] if "Buffers:" in ln)
    hits = sum(int(x) for x in re.findall(r"(?:hit|read)=(\d+)", buffers))
    assert hits < 50, buffers


def test_status_view_reads_no_table_scan(big_db):
    with psycopg.connect(big_db) as c:
        plan = "\n".join(r[0] for r in c.execute("EXPLAIN SELECT * FROM study_embed.status"))
        live = dict(c.execute("SELECT status, live FROM study_embed.status").fetchall())
    assert "Seq Scan on study_questions" not in plan
    assert live["ready"] == ROWS and live["none"] == CLAIMABLE
