"""Migrating over a bank the seed's own worker embedded: trusted vectors are kept (no request
to the embedding server, no rewrite of the row), everything else is queued, in bounded batches
that resume; the app keeps writing meanwhile."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector

from study_embed.migrate import MigrationError, Migrator
from study_embed.sqlfiles import sql_dir
from study_embed.worker import PROBE_TEXT
from study_embed_dev.embed_server import EmbedServer
from study_embed_dev.seed_bank import SCHEMA, SEED_MODEL, SeedRow, add_seed_rows

from ..conftest import _ensure_login, url_for
from ..helpers import listener_env, render, run_cli, vector_for

BANK = [
    SeedRow("kept"),  # ready, the configured model, the vector of its text: adopted
    SeedRow("kept, deleted", deleted=True),  # adopted as well (search skips it)
    SeedRow("other model", model="text-embedding-3-small"),  # queued stale
    SeedRow("ready without vector", vector=None),  # queued none
    SeedRow("pending", status="pending", vector=None, model=None),  # an expired claim
    SeedRow("failed", status="failed", vector="other"),  # failed, retried now
    SeedRow("stale", status="stale", vector="other"),  # stale
    SeedRow("none", status="none", vector=None, model=None),  # none
    SeedRow("none with vector", status="none", vector="other"),  # stale
]


def _seed(url: str, rows=BANK) -> list[int]:
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(SCHEMA)
        return add_seed_rows(c, rows)


def _rows(c: psycopg.Connection) -> dict[str, tuple]:
    return {
        r[0]: r[1:]
        for r in c.execute(
            "SELECT question_text, embedding_status, embedding_queued_at IS NOT NULL,"
            " embedding_claim_token IS NOT NULL, embedding_last_error IS NOT NULL"
            " FROM study_questions"
        )
    }


def _version(c: psycopg.Connection, text: str) -> tuple:
    """Where the row's current version is, and which transaction wrote it."""
    return c.execute(
        "SELECT ctid::text, xmin::text FROM study_questions WHERE question_text = %s", (text,)
    ).fetchone()


def _exact_counts(c: psycopg.Connection) -> None:
    """study_embed.status says what a count of the table says."""
    status = {
        s: (live, deleted)
        for s, live, deleted in c.execute("SELECT status, live, deleted FROM study_embed.status")
    }
    counted = {s: (0, 0) for s in status}
    for s, deleted, n in c.execute(
        "SELECT embedding_status, deleted_at IS NOT NULL, count(*) FROM study_questions"
        " GROUP BY 1, 2"
    ):
        live_n, deleted_n = counted[s]
        counted[s] = (live_n, deleted_n + n) if deleted else (live_n + n, deleted_n)
    assert status == counted


def test_trusted_vectors_are_kept_unwritten_and_the_rest_queued(empty_db):
    _seed(empty_db)
    with psycopg.connect(empty_db) as c:
        before = {t: _version(c, t) for t in ("kept", "kept, deleted")}
    report = Migrator(empty_db, model=SEED_MODEL, cron=False, log=lambda m: None).run()
    assert report.adoption == {
        "adopted": 2,
        "queued: ready, made by 'text-embedding-3-small'": 1,
        "queued: ready without a vector": 1,
        "queued: pending": 1,
        "queued: failed": 1,
        "queued: stale": 1,
        "queued: none": 1,
        "queued: none, with a vector": 1,
    }
    assert "2 adopted (kept, no embedding request), 7 queued" in report.summary()
    with psycopg.connect(empty_db) as c:
        # (status, queued, claim token, error recorded)
        assert _rows(c) == {
            "kept": ("ready", False, False, False),
            "kept, deleted": ("ready", False, False, False),
            "other model": ("stale", True, False, False),
            "ready without vector": ("none", True, False, False),
            "pending": ("pending", True, True, False),  # the old worker's claim, expired
            "failed": ("failed", True, False, True),
            "stale": ("stale", True, False, False),
            "none": ("none", True, False, False),
            "none with vector": ("stale", True, False, False),
        }
        # the adopted rows were not rewritten: same version, same place
        assert {t: _version(c, t) for t in before} == before
        # their source hash is the hash of their current text
        hashes = dict(
            c.execute(
                "SELECT q.question_text, a.source_sha256 FROM study_embed.adopted_source a"
                " JOIN study_questions q ON q.id = a.question_id"
            ).fetchall()
        )
        assert hashes == {
            t: hashlib.sha256(render(t, "하나", "둘", "셋", "넷").encode()).digest() for t in before
        }
        _exact_counts(c)
        # and every state CHECK holds for every row
        assert (
            c.execute(
                "SELECT count(*) FROM pg_constraint WHERE conrelid = 'study_questions'::regclass"
                " AND conname LIKE 'study_questions_embedding_%%' AND NOT convalidated"
            ).fetchone()[0]
            == 0
        )
        assert c.execute("SELECT finished_at IS NOT NULL FROM study_embed.adoption").fetchone()[0]
    # a second run walks nothing
    again = Migrator(empty_db, model=SEED_MODEL, cron=False, log=lambda m: None).run()
    assert again.adoption == {} and "nothing to apply" in again.summary()

    server = EmbedServer(dim=1024)
    try:
        r = run_cli("drain", env=listener_env(empty_db, server, EMBEDDING_MODEL=SEED_MODEL))
        assert r.returncode == 0, r.stderr
        asked = set(server.texts()) - {PROBE_TEXT}  # (the listener's start-up probe)
        # not one request for an adopted row; one for every live queued row
        assert render("kept", "하나", "둘", "셋", "넷") not in asked
        assert asked == {
            render(t, "하나", "둘", "셋", "넷")
            for t in (
                "other model",
                "ready without vector",
                "pending",
                "failed",
                "stale",
                "none",
                "none with vector",
            )
        }
        with psycopg.connect(empty_db, autocommit=True) as c:
            register_vector(c)
            assert {
                s
                for (s,) in c.execute(
                    "SELECT DISTINCT embedding_status FROM study_questions WHERE deleted_at IS NULL"
                )
            } == {"ready"}
            # the pending row's expired claim counted as one failed attempt, and was retried
            # an edit of an adopted row queues it, and its new text is embedded
            c.execute(
                "UPDATE study_questions SET question_text = 'kept, edited'"
                " WHERE question_text = 'kept'"
            )
            assert (
                c.execute(
                    "SELECT embedding_status FROM study_questions"
                    " WHERE question_text = 'kept, edited'"
                ).fetchone()[0]
                == "stale"
            )
        server.requests.clear()
        r = run_cli("drain", env=listener_env(empty_db, server, EMBEDDING_MODEL=SEED_MODEL))
        assert r.returncode == 0, r.stderr
        assert [t for t in server.texts() if t != PROBE_TEXT] == [
            render("kept, edited", "하나", "둘", "셋", "넷")
        ]
        with psycopg.connect(empty_db) as c:
            register_vector(c)
            emb, sha, adopted = c.execute(
                "SELECT embedding, embedding_source_sha256,"
                " EXISTS (SELECT 1 FROM study_embed.adopted_source a WHERE a.question_id = q.id)"
                " FROM study_questions q WHERE question_text = 'kept, edited'"
            ).fetchone()
            text = render("kept, edited", "하나", "둘", "셋", "넷")
            assert np.allclose(emb.to_numpy(), vector_for(text), atol=1e-6)
            # its own hash now, the adopted one gone
            assert (bytes(sha), adopted) == (hashlib.sha256(text.encode()).digest(), False)
            _exact_counts(c)
    finally:
        server.stop()


def test_reembed_all_keeps_no_vector(empty_db):
    _seed(empty_db)
    r = run_cli(
        "migrate", "--no-cron", "--reembed-all", env={**os.environ, "DATABASE_URL": empty_db}
    )
    assert r.returncode == 0, r.stderr
    assert (
        f"{len(BANK)} row(s) walked: 0 adopted (kept, no embedding request), {len(BANK)} queued"
        in r.stderr
    )
    assert f"{len(BANK)}  queued: re-embed of every row asked for" in r.stderr
    with psycopg.connect(empty_db) as c:
        assert {t: s for t, (s, *_) in _rows(c).items()} == {
            "kept": "stale",
            "kept, deleted": "stale",
            "other model": "stale",
            "ready without vector": "none",
            "pending": "none",
            "failed": "stale",
            "stale": "stale",
            "none": "none",
            "none with vector": "stale",
        }
        assert c.execute("SELECT count(*) FROM study_embed.adopted_source").fetchone()[0] == 0
        _exact_counts(c)


def test_a_model_name_the_old_worker_did_not_store_is_refused_and_the_app_writes_on(empty_db):
    """Nothing is queued for a name that does not match; meanwhile (migrated, not adopted) the
    app's role writes to rows from before study-embed as it always did."""
    _seed(empty_db)
    with pytest.raises(MigrationError, match=r"none made by the configured model 'bge-m3'"):
        Migrator(empty_db, model="bge-m3", cron=False, log=lambda m: None).run()
    with psycopg.connect(empty_db, autocommit=True) as c:
        assert c.execute("SELECT count(*) FROM study_embed.adoption_outcomes").fetchone()[0] == 0
        assert (
            c.execute(
                "SELECT count(*) FROM study_questions WHERE embedding_queued_at IS NOT NULL"
            ).fetchone()[0]
            == 0
        )
        _ensure_login("se_seed_app")
        c.execute(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON study_questions, study_topics, users"
            " TO se_seed_app"
        )
        c.execute("GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO se_seed_app")
    dbname = psycopg.conninfo.conninfo_to_dict(empty_db)["dbname"]
    with psycopg.connect(url_for(str(dbname), user="se_seed_app"), autocommit=True) as app:
        # an edit of any other column of every row: no CHECK trips, and the waiting ones are
        # queued by it (keeping their status)
        app.execute("UPDATE study_questions SET explanation = 'edited by the app'")
        assert {
            t: r for t, r in _rows(app).items() if t in ("none", "pending", "failed", "kept")
        } == {
            "none": ("none", True, False, False),
            "pending": ("pending", True, True, False),
            "failed": ("failed", True, False, True),
            "kept": ("ready", False, False, False),  # left to the adoption
        }
        # a text edit of a ready row from before study-embed queues it
        app.execute("UPDATE study_questions SET choice_1 = '하나!' WHERE question_text = 'kept'")
        app.execute(
            "INSERT INTO study_questions (user_id, study_topic_id, question_text, choice_1,"
            " choice_2, choice_3, choice_4, correct_choice) SELECT user_id, study_topic_id,"
            " 'new', 'a', 'b', 'c', 'd', 1 FROM study_questions LIMIT 1"
        )
    report = Migrator(empty_db, model=SEED_MODEL, cron=False, log=lambda m: None).run()
    # what the app's writes queued is study-embed's now, not adopted twice
    assert report.adoption == {
        "adopted": 1,  # "kept, deleted"
        "queued: ready, made by 'text-embedding-3-small'": 1,
        # every other row, and the new one: queued by the app's writes, not adopted twice
        "already study-embed's": 8,
    }
    with psycopg.connect(empty_db) as c:
        assert _rows(c)["kept"][0] == "stale"
        _exact_counts(c)


def test_the_adoption_resumes_where_it_stopped(empty_db):
    ids = _seed(
        empty_db,
        [SeedRow(f"q{i}") for i in range(7)]
        + [SeedRow("x", status="none", vector=None, model=None)],
    )
    with pytest.raises(MigrationError):  # the schema goes in; stop before adopting
        Migrator(empty_db, model="no such model", cron=False, log=lambda m: None).run()
    with psycopg.connect(empty_db, autocommit=True) as c:
        # a first batch of 3, as a migrate that was killed afterwards would have left it
        c.execute("SELECT * FROM study_embed.adopt(%s, false, 3)", (SEED_MODEL,))
        assert c.execute("SELECT after_id FROM study_embed.adoption").fetchone()[0] == ids[2]
    with pytest.raises(MigrationError, match="an adoption is under way"):
        Migrator(empty_db, model=SEED_MODEL, reembed=True, cron=False, log=lambda m: None).run()
    report = Migrator(empty_db, model=SEED_MODEL, cron=False, log=lambda m: None).run()
    assert report.adoption == {"adopted": 4, "queued: none": 1}  # the rest, once each
    with psycopg.connect(empty_db) as c:
        assert dict(c.execute("SELECT outcome, n FROM study_embed.adoption_outcomes")) == {
            "adopted": 7,
            "queued: none": 1,
        }
        assert c.execute("SELECT count(*) FROM study_embed.adopted_source").fetchone()[0] == 7


def test_a_database_that_ran_an_earlier_version_of_a_replaced_migration_is_up_to_date(empty_db):
    """0001 and 0005 were edited (they no longer rewrite an adopted bank in one transaction):
    each names the digest of the version it replaces, which a ledger may hold."""
    Migrator(empty_db, cron=False, log=lambda m: None).run()
    for name in ("0001_schema.sql", "0005_write_path.sql"):
        text = (sql_dir() / "migrations" / name).read_text()
        (old,) = re.findall(r"^-- replaces sha256: ([0-9a-f]{64})$", text, re.MULTILINE)
        with psycopg.connect(empty_db, autocommit=True) as c:
            c.execute(
                "UPDATE study_embed.schema_migrations SET sha256 = %s WHERE filename = %s",
                (old, f"migrations/{name}"),
            )
    assert Migrator(empty_db, cron=False, log=lambda m: None).run().applied == []
    with psycopg.connect(empty_db, autocommit=True) as c:
        c.execute(
            "UPDATE study_embed.schema_migrations SET sha256 = repeat('0', 64)"
            " WHERE filename = 'migrations/0001_schema.sql'"
        )
    with pytest.raises(MigrationError, match="was edited after it was applied"):
        Migrator(empty_db, cron=False, log=lambda m: None).run()


def test_the_apps_writes_trip_no_check_between_the_migrations_and_the_state_machine(empty_db):
    """migrate applies each migration in a transaction of its own, and the state machine after
    them: a write of the app's in between (or after a crash in between) meets the CHECKs that
    0001 and 0005 added, and rows from before study-embed that do not satisfy them yet."""
    _seed(empty_db)
    with psycopg.connect(empty_db, autocommit=True) as c:
        c.execute("CREATE SCHEMA study_embed")
    for path in sorted((sql_dir() / "migrations").glob("*.sql")):
        r = subprocess.run(
            [
                "psql",
                empty_db,
                "--no-psqlrc",
                "-q",
                "--single-transaction",
                "-v",
                "ON_ERROR_STOP=1",
                "-v",
                "embedding_dim=1024",
                "-v",
                f"embedding_model={SEED_MODEL}",
                "-f",
                str(path),
            ],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, r.stderr
        with psycopg.connect(empty_db, autocommit=True) as c:
            c.execute("UPDATE study_questions SET explanation = %s", (path.name,))
    with psycopg.connect(empty_db) as c:
        assert {t: s for t, (s, *_) in _rows(c).items()} == {
            "kept": "ready",
            "kept, deleted": "ready",
            "other model": "ready",
            "ready without vector": "none",
            "pending": "pending",
            "failed": "failed",
            "stale": "stale",
            "none": "none",
            "none with vector": "none",
        }
        # every row satisfies every CHECK now, though none is validated yet
        for (name,) in c.execute(
            "SELECT conname FROM pg_constraint WHERE conrelid = 'study_questions'::regclass"
            " AND conname LIKE 'study_questions_embedding_%%' AND NOT convalidated"
        ).fetchall():
            c.execute(
                psycopg.sql.SQL("ALTER TABLE study_questions VALIDATE CONSTRAINT {}").format(
                    psycopg.sql.Identifier(name)
                )
            )
