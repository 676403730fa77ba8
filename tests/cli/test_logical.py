"""Logical replication between two local clusters, in the two modes the README documents:

- a subscriber that **receives the vectors**: the publisher's pipeline embeds, every column is
  published, the subscriber's copy of the pipeline stays idle (its triggers do not run in the
  apply worker; its counts are recounted on demand);
- a subscriber that **embeds for itself**: only the app's columns are published (a column list,
  PostgreSQL 15+), the subscriber's triggers are ENABLE ALWAYS, so that every applied insert and
  edit enters its own state machine, and its own listener embeds.

After 1,000 inserts and 200 edits on the publisher, the subscriber's rows are compared one by
one."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from pgvector.psycopg import register_vector

from study_embed.migrate import Migrator
from study_embed_dev.localdb import Cluster, free_port
from study_embed_dev.rows import add_topic, add_user

from ..conftest import scratch_dir
from ..helpers import (
    TEST_MODEL,
    listener_env,
    ready_rows_not_of_their_text,
    run_cli,
    status_counts,
    vector_for,
    wait_until,
)

pytestmark = pytest.mark.slow
DB = "app"
ROWS, EDITS = 1000, 200
APP_TABLES = "users, study_topics, study_questions, study_question_attempts"
# the app's columns of study_questions: what a subscriber that embeds for itself receives
APP_COLUMNS = (
    "id, user_id, study_topic_id, question_text, choice_1, choice_2, choice_3, choice_4,"
    " correct_choice, subject, scope, exam_name, exam_round, explanation, source_note, is_active,"
    " ai_explanation, ai_explanation_status, ai_explanation_generated_at, ai_explanation_model,"
    " created_at, updated_at, deleted_at"
)
TRIGGERS = (
    "study_embed_guard_insert",
    "study_embed_guard_update",
    "study_embed_queue_unadopted",
    "study_embed_count_insert",
    "study_embed_count_update",
    "study_embed_after_delete",
    "study_embed_after_truncate",
)
COMPARED = (
    "id, question_text, choice_1, choice_2, choice_3, choice_4, deleted_at, embedding,"
    " embedding_status, embedding_model, embedding_source_sha256"
)


@dataclass
class Two:
    publisher: Cluster
    subscriber: Cluster

    def url(self, which: str) -> str:
        return getattr(self, which).url(DB)


@pytest.fixture
def two() -> Iterator[Two]:
    """A publisher (wal_level = logical) and a subscriber, each with a migrated database."""
    pub = Cluster(datadir=scratch_dir("study-embed-publisher-") / "data", port=free_port())
    sub = Cluster(datadir=scratch_dir("study-embed-subscriber-") / "data", port=free_port())
    try:
        for c in (pub, sub):
            c.init()
        with open(pub.datadir / "postgresql.auto.conf", "a") as conf:
            conf.write("wal_level = logical\n")
        for c in (pub, sub):
            c.start()
            c.create_database(DB)
            Migrator(c.url(DB), model=TEST_MODEL, cron=False, log=lambda _m: None).run()
        yield Two(pub, sub)
    finally:
        sub.destroy()
        pub.destroy()


def _subscribe(two: Two, publication: str) -> None:
    conninfo = f"host={two.publisher.sockdir} port={two.publisher.port} dbname={DB} user=postgres"
    with psycopg.connect(two.url("subscriber"), autocommit=True) as s:
        s.execute(
            psycopg.sql.SQL("CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {}").format(
                psycopg.sql.Identifier(publication),
                psycopg.sql.Literal(conninfo),
                psycopg.sql.Identifier(publication),
            )
        )


def _write(url: str) -> None:
    """1,000 questions inserted, 200 of them edited, as the app would."""
    with psycopg.connect(url, autocommit=True) as c:
        uid = add_user(c, "logical@example.com")
        tid = add_topic(c, uid, "t")
        with c.cursor() as cur:
            cur.executemany(
                "INSERT INTO study_questions (user_id, study_topic_id, question_text, choice_1,"
                " choice_2, choice_3, choice_4, correct_choice) VALUES (%s, %s, %s, 'a', 'b',"
                " 'c', %s, 1)",
                [(uid, tid, f"logical question {i}?", f"d{i}") for i in range(ROWS)],
            )


def _edit(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(
            "UPDATE study_questions SET question_text = question_text || ' (edited)'"
            " WHERE id IN (SELECT id FROM study_questions ORDER BY id LIMIT %s)",
            (EDITS,),
        )


def _rows(url: str) -> dict[int, tuple]:
    with psycopg.connect(url) as c:
        register_vector(c)
        return {
            r[0]: tuple(x.to_list() if hasattr(x, "to_list") else x for x in r)
            for r in c.execute(f"SELECT {COMPARED} FROM study_questions")
        }


def _caught_up(two: Two) -> bool:
    with (
        psycopg.connect(two.url("publisher"), autocommit=True) as p,
        psycopg.connect(two.url("subscriber"), autocommit=True) as s,
    ):
        [(lsn,)] = p.execute("SELECT pg_current_wal_lsn()::text").fetchall()
        syncing = s.execute(
            "SELECT count(*) FROM pg_subscription_rel WHERE srsubstate <> 'r'"
        ).fetchone()[0]
        done = s.execute(
            "SELECT coalesce(bool_and(latest_end_lsn >= %s::pg_lsn), false)"
            " FROM pg_stat_subscription WHERE relid IS NULL",
            (lsn,),
        ).fetchone()[0]
        return syncing == 0 and done


def _drain(url: str, server) -> None:
    r = run_cli("drain", env=listener_env(url, server))
    assert r.returncode == 0, r.stderr


def _ready_rows_are_their_texts(url: str) -> int:
    """Every row ready, its vector the one of its current text; the counters agree."""
    with psycopg.connect(url, autocommit=True) as c:
        [(rows,)] = c.execute("SELECT count(*) FROM study_questions").fetchall()
        ready, wrong = ready_rows_not_of_their_text(c, vector_for)
        assert ready == rows and wrong == []
        got, want = status_counts(c)
        assert got == want == {"ready": rows}
        return rows


def test_a_subscriber_receives_the_vectors_and_no_row_differs(two, server):
    with psycopg.connect(two.url("publisher"), autocommit=True) as p:
        p.execute(f"CREATE PUBLICATION study_embed_all FOR TABLE {APP_TABLES}")
    _subscribe(two, "study_embed_all")
    _write(two.url("publisher"))
    _drain(two.url("publisher"), server)
    _edit(two.url("publisher"))
    _drain(two.url("publisher"), server)
    wait_until(lambda: _caught_up(two), timeout=60, what="the subscriber to catch up")
    publisher, subscriber = _rows(two.url("publisher")), _rows(two.url("subscriber"))
    assert len(publisher) == ROWS
    differ = [qid for qid in publisher if publisher[qid] != subscriber.get(qid)]
    assert differ == [] and subscriber.keys() == publisher.keys()
    assert sum(1 for r in subscriber.values() if r[1].endswith("(edited)")) == EDITS
    # the pipeline's triggers did not run in the apply worker: its counters are stale until
    # recounted on demand, and then exact
    with psycopg.connect(two.url("subscriber"), autocommit=True) as s:
        s.execute("SELECT study_embed.recount()")
    assert _ready_rows_are_their_texts(two.url("subscriber")) == ROWS


def test_a_subscriber_that_embeds_for_itself_gets_the_app_columns_only(two, server):
    with psycopg.connect(two.url("publisher"), autocommit=True) as p:
        p.execute(
            "CREATE PUBLICATION study_embed_app FOR TABLE users, study_topics,"
            f" study_questions ({APP_COLUMNS}), study_question_attempts"
        )
    with psycopg.connect(two.url("subscriber"), autocommit=True) as s:
        for trigger in TRIGGERS:
            s.execute(
                psycopg.sql.SQL("ALTER TABLE study_questions ENABLE ALWAYS TRIGGER {}").format(
                    psycopg.sql.Identifier(trigger)
                )
            )
    # an upgrade of study-embed on the subscriber keeps them firing for the apply worker
    Migrator(two.url("subscriber"), model=TEST_MODEL, cron=False, log=lambda _m: None).run(
        force=True
    )
    with psycopg.connect(two.url("subscriber")) as s:
        assert s.execute(
            "SELECT array_agg(DISTINCT tgenabled::text) FROM pg_trigger"
            " WHERE tgrelid = 'study_questions'::regclass AND tgname = ANY(%s)",
            (list(TRIGGERS),),
        ).fetchone()[0] == ["A"]
    _subscribe(two, "study_embed_app")
    _write(two.url("publisher"))
    wait_until(lambda: _caught_up(two), timeout=60, what="the subscriber to catch up")
    with psycopg.connect(two.url("subscriber"), autocommit=True) as s:
        # every applied insert entered the subscriber's state machine
        assert (
            dict(s.execute("SELECT status, live FROM study_embed.status").fetchall())["none"]
            == ROWS
        )
    _drain(two.url("subscriber"), server)
    _edit(two.url("publisher"))
    wait_until(lambda: _caught_up(two), timeout=60, what="the edits to arrive")
    with psycopg.connect(two.url("subscriber"), autocommit=True) as s:
        stale = s.execute(
            "SELECT count(*) FROM study_questions WHERE embedding_status = 'stale'"
        ).fetchone()[0]
    assert stale == EDITS  # an applied text edit made the subscriber's vector stale
    _drain(two.url("subscriber"), server)
    assert _ready_rows_are_their_texts(two.url("subscriber")) == ROWS
    # the publisher's pipeline columns were never sent: its rows are still waiting there
    with psycopg.connect(two.url("publisher")) as p:
        assert (
            p.execute(
                "SELECT count(*) FROM study_questions WHERE embedding IS NOT NULL"
            ).fetchone()[0]
            == 0
        )
