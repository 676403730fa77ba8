"""`make migrate`: from scratch, twice, refusals, the lock, the dimension, pg_cron."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from study_embed.migrate import MigrationError, Migrator
from study_embed.sqlfiles import sql_dir
from study_embed_dev.localdb import Cluster

from ..conftest import _free_port, scratch_dir, url_for
from ..helpers import TEST_MODEL


def _columns(url: str) -> dict[str, str]:
    with psycopg.connect(url) as c:
        return dict(
            c.execute(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
                " WHERE attrelid = 'public.study_questions'::regclass AND attnum > 0"
                " AND NOT attisdropped"
            ).fetchall()
        )


ALL_MIGRATIONS = sorted(p.name for p in (sql_dir() / "migrations").glob("*.sql"))


def test_from_scratch_twice_second_run_applies_nothing(empty_db):
    logs: list[str] = []
    first = Migrator(empty_db, cron=False, log=logs.append).run()
    assert first.applied == ALL_MIGRATIONS and first.idempotent
    cols = _columns(empty_db)
    # the seed's columns, as its ORM names them, and the pipeline's bookkeeping
    for name in [
        "question_text",
        "choice_1",
        "choice_2",
        "choice_3",
        "choice_4",
        "correct_choice",
        "subject",
        "scope",
        "exam_name",
        "exam_round",
        "explanation",
        "source_note",
        "is_active",
        "ai_explanation",
        "ai_explanation_status",
        "ai_explanation_generated_at",
        "ai_explanation_model",
        "embedding_status",
        "embedding_updated_at",
        "embedding_model",
        "created_at",
        "updated_at",
        "deleted_at",
        "embedding_claim_token",
        "embedding_due_at",
        "embedding_source_sha256",
        "embedding_attempts",
        "embedding_last_error",
    ]:
        assert name in cols, name
    assert cols["embedding"] == "vector(1024)"
    assert cols["embedding_status"] == "character varying(20)"
    logs.clear()
    second = Migrator(empty_db, cron=False, log=logs.append).run()
    assert second.applied == [] and not second.idempotent and logs == []
    assert second.summary().startswith("migrate: nothing to apply")


def test_a_migrate_keeps_the_mode_an_operator_gave_a_trigger(empty_db):
    """CREATE OR REPLACE TRIGGER would put every trigger back to firing in origin mode: a
    logical-replication subscriber that embeds for itself (ENABLE ALWAYS) would silently stop
    queueing what it receives after the next upgrade."""
    Migrator(empty_db, cron=False, log=lambda _m: None).run()
    modes = {
        "study_embed_guard_insert": "ENABLE ALWAYS",
        "study_embed_guard_update": "ENABLE REPLICA",
        "study_embed_count_insert": "DISABLE",
    }
    with psycopg.connect(empty_db, autocommit=True) as c:
        for trigger, mode in modes.items():
            c.execute(
                sql.SQL("ALTER TABLE study_questions {} TRIGGER {}").format(
                    sql.SQL(mode), sql.Identifier(trigger)
                )
            )
    Migrator(empty_db, cron=False, log=lambda _m: None).run(force=True)
    with psycopg.connect(empty_db) as c:
        got = dict(
            c.execute(
                "SELECT tgname, tgenabled::text FROM pg_trigger"
                " WHERE tgrelid = 'study_questions'::regclass AND NOT tgisinternal"
            ).fetchall()
        )
    assert {k: got[k] for k in modes} == {
        "study_embed_guard_insert": "A",
        "study_embed_guard_update": "R",
        "study_embed_count_insert": "D",
    }
    assert {v for k, v in got.items() if k not in modes} == {"O"}


def test_indexes_are_the_seeds_hnsw_and_the_queue(empty_db):
    Migrator(empty_db, cron=False, log=lambda m: None).run()
    with psycopg.connect(empty_db) as c:
        defs = dict(
            c.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'study_questions'"
            ).fetchall()
        )
    hnsw = defs["study_questions_embedding_hnsw"]
    assert "USING hnsw (embedding vector_cosine_ops)" in hnsw
    assert "WHERE ((deleted_at IS NULL) AND (embedding IS NOT NULL))" in hnsw
    queue = defs["study_questions_embedding_queue"]
    assert "(embedding_queued_at, id)" in queue
    assert "WHERE ((deleted_at IS NULL) AND (embedding_queued_at IS NOT NULL))" in queue


QUEUE_MOVES = {
    "embedding_status",
    "embedding_claim_token",
    "embedding_due_at",
    "embedding_attempts",
    "embedding_last_error",
    "updated_at",
    "correct_choice",
    "explanation",
    "subject",
    "scope",
    "is_active",
    "question_text",
    "choice_1",
    "choice_2",
    "choice_3",
    "choice_4",
}


def test_no_index_uses_a_column_that_queue_moves_or_app_edits_change(empty_db):
    """What keeps claim, fail, release, retries and the app's edits HOT: no index (key,
    expression or partial-index predicate) of study_questions reads a column they write."""
    Migrator(empty_db, cron=False, log=lambda m: None).run()
    with psycopg.connect(empty_db) as c:
        used = {
            r[0]
            for r in c.execute(r"""
            SELECT a.attname FROM pg_index i
            JOIN pg_attribute a ON a.attrelid = i.indrelid
            WHERE i.indrelid = 'study_questions'::regclass AND a.attnum > 0
              AND (a.attnum = ANY (i.indkey)
                   OR pg_get_expr(i.indpred, i.indrelid) ~ ('\m' || a.attname || '\M')
                   OR pg_get_expr(i.indexprs, i.indrelid) ~ ('\m' || a.attname || '\M'))""")
        }
    assert used == {
        "id",
        "user_id",
        "study_topic_id",
        "embedding",
        "deleted_at",
        "embedding_queued_at",
    }
    assert not used & QUEUE_MOVES


def test_edited_applied_migration_is_refused(empty_db, tmp_path):
    db_dir = tmp_path / "db"
    shutil.copytree(sql_dir(), db_dir)
    Migrator(empty_db, cron=False, db_dir=db_dir, log=lambda m: None).run()
    mig = db_dir / "migrations" / "0001_schema.sql"
    mig.write_text(mig.read_text() + "\n-- an innocent-looking edit\n")
    with pytest.raises(MigrationError, match="0001_schema.sql was edited after it was applied"):
        Migrator(empty_db, cron=False, db_dir=db_dir, log=lambda m: None).run()


def test_new_migration_and_changed_functions_are_applied(empty_db, tmp_path):
    db_dir = tmp_path / "db"
    shutil.copytree(sql_dir(), db_dir)
    Migrator(empty_db, cron=False, db_dir=db_dir, log=lambda m: None).run()
    (db_dir / "migrations" / "0099_extra.sql").write_text(
        "ALTER TABLE public.study_questions ADD COLUMN extra int;\n"
    )
    (db_dir / "idempotent" / "099_extra.sql").write_text(
        "CREATE OR REPLACE FUNCTION study_embed.extra() RETURNS int LANGUAGE sql RETURN 7;\n"
    )
    r = Migrator(empty_db, cron=False, db_dir=db_dir, log=lambda m: None).run()
    assert r.applied == ["0099_extra.sql"] and r.idempotent
    with psycopg.connect(empty_db) as c:
        assert c.execute("SELECT study_embed.extra()").fetchone()[0] == 7


@contextlib.contextmanager
def _before_migration(url: str, tmp_path, name: str) -> Iterator[psycopg.Connection]:
    """A database migrated up to migrations/`name`, not including it, for the block to leave as
    an older release would; then `name` applied."""
    db_dir = tmp_path / "db"
    shutil.copytree(sql_dir(), db_dir)
    later = db_dir / "migrations" / name
    text = later.read_text()
    later.unlink()
    Migrator(url, cron=False, db_dir=db_dir, log=lambda m: None).run()
    with psycopg.connect(url, autocommit=True) as c:
        yield c
    later.write_text(text)
    r = Migrator(url, cron=False, db_dir=db_dir, log=lambda m: None).run()
    assert name in r.applied


def test_the_near_duplicate_queue_keeps_its_questions_when_it_becomes_a_row_per_batch(
    empty_db, tmp_path
):
    """0010: what the pass had not examined yet, queued a row per question, is queued again in
    rows of 200, oldest first."""
    with _before_migration(empty_db, tmp_path, "0010_duplicate_batches.sql") as c:
        c.execute(
            "INSERT INTO study_embed.duplicate_queue (question_id, queued_at)"
            " SELECT 1000 - i, now() - make_interval(secs => 1000 - i)"
            " FROM generate_series(1, 250) AS i"
        )
    with psycopg.connect(empty_db) as c:
        rows = c.execute("SELECT question_ids FROM study_embed.duplicate_queue ORDER BY id")
        assert [ids for (ids,) in rows] == [
            list(range(999, 799, -1)),
            list(range(799, 749, -1)),
        ]


@pytest.mark.parametrize(
    ("before", "after"),
    [(0.88, (0.755, 0.15)), (0.9, (0.9, 0.0))],
    ids=["as make eval chose it", "changed by an operator"],
)
def test_e5_clusters_with_the_words_unless_an_operator_chose_its_threshold(
    empty_db, tmp_path, before, after
):
    """0011: e5's cluster threshold and word weight become the pair make eval chose together;
    a threshold an operator changed keeps its meaning (the vectors alone)."""
    e5 = "intfloat/multilingual-e5-small"
    with _before_migration(empty_db, tmp_path, "0011_cluster_words.sql") as c:
        c.execute(
            "UPDATE study_embed.model_thresholds SET cluster_threshold = %s WHERE model = %s",
            (before, e5),
        )
    pair = (
        "SELECT cluster_threshold, cluster_word_weight FROM study_embed.model_thresholds"
        " WHERE model = %s"
    )
    with psycopg.connect(empty_db) as c:
        assert c.execute(pair, (e5,)).fetchone() == pytest.approx(after)
        assert c.execute(pair, ("BAAI/bge-m3",)).fetchone() == pytest.approx((0.75, 0.0))


def test_failed_migration_rolls_back_with_its_ledger_row(empty_db, tmp_path):
    db_dir = tmp_path / "db"
    shutil.copytree(sql_dir(), db_dir)
    Migrator(empty_db, cron=False, db_dir=db_dir, log=lambda m: None).run()
    (db_dir / "migrations" / "0099_bad.sql").write_text(
        "CREATE TABLE half_done (id int);\nSELECT no_such_function();\n"
    )
    with pytest.raises(MigrationError, match="no_such_function"):
        Migrator(empty_db, cron=False, db_dir=db_dir, log=lambda m: None).run()
    with psycopg.connect(empty_db) as c:
        assert c.execute("SELECT to_regclass('half_done')").fetchone()[0] is None
        assert (
            c.execute(
                "SELECT count(*) FROM study_embed.schema_migrations WHERE filename LIKE '%%0099%%'"
            ).fetchone()[0]
            == 0
        )


def test_two_migrators_do_not_race(empty_db):
    from study_embed.migrate import LOCK_KEY

    holder = psycopg.connect(empty_db, autocommit=True)
    holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
    logs: list[str] = []
    result: dict = {}
    t = threading.Thread(
        target=lambda: result.update(r=Migrator(empty_db, cron=False, log=logs.append).run())
    )
    t.start()
    deadline = time.monotonic() + 10
    while not logs and time.monotonic() < deadline:
        time.sleep(0.05)
    assert logs and "waiting" in logs[0]
    assert _table_missing(empty_db)  # nothing applied while the lock is held
    holder.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    holder.close()
    t.join(30)
    assert result["r"].applied == ALL_MIGRATIONS


def _table_missing(url: str) -> bool:
    with psycopg.connect(url) as c:
        return c.execute("SELECT to_regclass('public.study_questions')").fetchone()[0] is None


def _storage(url: str) -> str:
    with psycopg.connect(url) as c:
        return c.execute(
            "SELECT attstorage FROM pg_attribute WHERE attrelid ="
            " 'study_questions'::regclass AND attname = 'embedding'"
        ).fetchone()[0]


def test_vectors_live_in_toast_and_pages_keep_room_for_updates(empty_db):
    """A 1024-dim vector kept in the row (4,104 bytes) would leave no room on its page for a
    second version, so no update of the row could be HOT (0005_write_path.sql)."""
    Migrator(empty_db, model=TEST_MODEL, cron=False, log=lambda m: None).run()
    assert _storage(empty_db) == "e"
    with psycopg.connect(empty_db) as c:
        options = c.execute(
            "SELECT reloptions FROM pg_class WHERE oid = 'study_questions'::regclass"
        ).fetchone()[0]
        c.execute(
            "INSERT INTO users (id, email) VALUES (1, 'a'); INSERT INTO study_topics"
            " (id, user_id, name) VALUES (1, 1, 't')"
        )
        c.execute(
            "INSERT INTO study_questions (user_id, study_topic_id, question_text, choice_1,"
            " choice_2, choice_3, choice_4, correct_choice) VALUES (1, 1, 'q', 'a', 'b',"
            " 'c', 'd', 1)"
        )
        qid, token, _ = c.execute("SELECT * FROM study_embed.claim(1)").fetchone()
        vec = "[" + ",".join(["0.03125"] * 1024) + "]"
        c.execute(
            "SELECT * FROM study_embed.complete(%s, %s, ARRAY[%s::vector], 'test-model')",
            ([qid], [token], vec),
        )
        # the vector went to the TOAST table: the row holds a pointer to it
        toast = c.execute(
            "SELECT reltoastrelid::regclass::text FROM pg_class"
            " WHERE oid = 'study_questions'::regclass"
        ).fetchone()[0]
        toasted = c.execute(f"SELECT coalesce(sum(length(chunk_data)), 0) FROM {toast}").fetchone()[
            0
        ]
    assert "fillfactor=85" in options
    assert toasted == 2 + 2 + 4 * 1024  # pgvector: dim, unused, the floats


def test_very_wide_vectors_stay_in_toast(empty_db):
    Migrator(empty_db, embedding_dim=1900, cron=False, log=lambda m: None).run()
    assert _storage(empty_db) == "e"


def test_embedding_dim_is_a_migrate_time_setting(empty_db):
    Migrator(empty_db, embedding_dim=384, cron=False, log=lambda m: None).run()
    assert _columns(empty_db)["embedding"] == "vector(384)"
    with pytest.raises(MigrationError, match=r"vector\(384\) but EMBEDDING_DIM=1024"):
        Migrator(empty_db, embedding_dim=1024, cron=False, log=lambda m: None).run()
    # unset: the existing column keeps its dimension
    assert Migrator(empty_db, cron=False, log=lambda m: None).run().applied == []
    with psycopg.connect(empty_db) as c:
        assert c.execute("SELECT study_embed.embedding_dimension()").fetchone()[0] == 384


def _cli(*args, env=None):
    import os

    return subprocess.run(
        [sys.executable, "-m", "study_embed.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_cli_bad_configuration_exits_2(empty_db):
    r = _cli("migrate", "--embedding-dim", "lots", "--database-url", empty_db)
    assert r.returncode == 2 and "EMBEDDING_DIM" in r.stderr.upper()
    r = _cli("migrate", env={"DATABASE_URL": empty_db, "STUDY_EMBED_CRON": "maybe"})
    assert r.returncode == 2 and "STUDY_EMBED_CRON='maybe': must be on or off" in r.stderr


def test_cli_unreachable_database_is_a_clear_error():
    r = _cli("migrate", "--database-url", "postgresql://nobody@127.0.0.1:1/nothing")
    assert r.returncode == 1 and "cannot connect to the database" in r.stderr


def test_cron_tick_is_scheduled_into_the_app_database_and_notifies(empty_db):
    report = Migrator(empty_db, cron=True, log=lambda m: None).run()
    assert report.cron == "scheduled"
    app_db = psycopg.conninfo.conninfo_to_dict(empty_db)["dbname"]
    with psycopg.connect(url_for("postgres")) as c:
        jobs = c.execute(
            "SELECT jobname, schedule, command, database FROM cron.job WHERE database = %s",
            (app_db,),
        ).fetchall()
    assert jobs == [
        (f"study_embed_tick:{app_db}", "* * * * *", "SELECT study_embed.tick()", app_db)
    ]
    again = Migrator(empty_db, cron=True, log=lambda m: None).run()
    assert again.cron == "up to date" and again.summary().startswith("migrate: nothing to apply")

    # pg_cron really runs it: a claimable row and an idle listener get a NOTIFY from the tick
    with psycopg.connect(empty_db, autocommit=True) as app:
        uid = app.execute("INSERT INTO users (email) VALUES ('cron@x') RETURNING id").fetchone()[0]
        tid = app.execute(
            "INSERT INTO study_topics (user_id, name) VALUES (%s, 't') RETURNING id", (uid,)
        ).fetchone()[0]
        app.execute(
            "INSERT INTO study_questions (user_id, study_topic_id, question_text, choice_1,"
            " choice_2, choice_3, choice_4, correct_choice)"
            " VALUES (%s, %s, 'q', 'a', 'b', 'c', 'd', 1)",
            (uid, tid),
        )
        app.execute("LISTEN study_embed")
        got = [n.payload for n in app.notifies(timeout=75, stop_after=1)]
    assert got == ["tick"]


def test_pg_cron_not_preloaded_is_a_clear_error():
    other = Cluster(datadir=scratch_dir() / "data", port=_free_port())
    other.init()
    other.start(extra_options="-c shared_preload_libraries=")
    try:
        other.create_database("app")
        with pytest.raises(MigrationError, match="pg_cron is not preloaded.*--no-cron"):
            Migrator(other.url("app"), cron=True, log=lambda m: None).run()
        # without the tick the rest of the schema still installs
        assert Migrator(other.url("app"), cron=False, log=lambda m: None).run().applied
    finally:
        other.destroy()
