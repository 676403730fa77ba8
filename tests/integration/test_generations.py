"""Model changes (046_generations.sql): the next model's vectors are built beside the served
ones, every comparison is one model's vectors with the same model's, and the switch is one
step that can be taken back until the other generation is dropped.

The served generation of the test databases is TEST_MODEL at 1024 dimensions; the next one
here is NEXT at 384.
"""

from __future__ import annotations

import numpy as np
import psycopg
import pytest

from study_embed.migrate import MigrationError, Migrator

from ..helpers import TEST_MODEL, Claimed, render, vector_for

NEXT, NEXT_DIM = "next-model", 384


def migrator(db_url: str) -> Migrator:
    return Migrator(db_url, model=TEST_MODEL, cron=False, log=lambda _m: None)


def begin(db_url: str, model: str = NEXT, dim: int = NEXT_DIM) -> None:
    migrator(db_url).generation("begin", model=model, dimension=dim)


def claim_shadow(db, n: int = 100) -> list[Claimed]:
    rows = db.execute("SELECT id, claim_token, body FROM study_embed.claim_shadow(%s)", (n,))
    return [Claimed(*r) for r in rows.fetchall()]


def complete_shadow(db, claimed, model: str = NEXT, dim: int = NEXT_DIM) -> set[int]:
    rows = db.execute(
        "SELECT * FROM study_embed.complete_shadow(%s, %s, %s, %s)",
        (
            [c.id for c in claimed],
            [c.token for c in claimed],
            [vector_for(c.body, dim) for c in claimed],
            model,
        ),
    ).fetchall()
    return {r[0] for r in rows}


def ready_all(bank) -> None:
    bank.complete(bank.claim(1000))


def generations(db) -> dict[str, tuple]:
    rows = db.execute(
        "SELECT role, model, dimension, live, ready FROM study_embed.generation_status()"
    ).fetchall()
    return {r[0]: r[1:] for r in rows}


def search(db, user: int, query: np.ndarray, k: int = 5) -> list[int]:
    rows = db.execute(
        "SELECT id FROM study_embed.search_questions(%s, %s, %s)", (user, query, k)
    ).fetchall()
    return [r[0] for r in rows]


def test_begin_queues_every_row_for_the_next_model_and_search_serves_the_old(bank, db, db_url):
    ids = [bank.insert() for _ in range(5)]
    ready_all(bank)
    before = search(db, bank.user_id, vector_for(bank.text(ids[0])))
    begin(db_url)
    assert generations(db) == {
        "served": (TEST_MODEL, 1024, 5, 5),
        "next": (NEXT, NEXT_DIM, 5, 0),
    }
    row = bank.row(ids[0])
    assert row["embedding_shadow_status"] == "none" and row["embedding_shadow"] is None
    # the served generation is untouched, and search still serves it
    assert bank.status(ids[0]) == "ready"
    assert search(db, bank.user_id, vector_for(bank.text(ids[0]))) == before
    # a row inserted during the change joins both queues
    new = bank.insert()
    assert bank.row(new)["embedding_shadow_status"] == "none"
    assert {c.id for c in claim_shadow(db)} == {*ids, new}
    with pytest.raises(MigrationError, match="a model change is in progress"):
        begin(db_url, "third-model", 8)


def test_begin_refuses_the_served_model_and_a_bad_dimension(bank, db_url):
    with pytest.raises(MigrationError, match="served model already"):
        begin(db_url, TEST_MODEL, 1024)
    with pytest.raises(MigrationError, match="between 1 and 2000"):
        begin(db_url, NEXT, 4096)


def test_complete_takes_only_each_generations_model(bank, db, db_url):
    qid = bank.insert()
    begin(db_url)
    [c] = bank.claim()
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="serves model test-model"):
        bank.complete([c], model=NEXT)
    assert bank.complete([c]) == {qid}
    [s] = claim_shadow(db)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="shadow generation is model"):
        complete_shadow(db, [s], model=TEST_MODEL)
    with pytest.raises(psycopg.errors.DataException, match="expected 384 dimensions"):
        complete_shadow(db, [s], dim=1024)
    assert complete_shadow(db, [s]) == {qid}
    row = bank.row(qid)
    assert row["embedding_shadow_status"] == "ready"
    assert row["embedding_shadow_model"] == NEXT
    assert len(row["embedding_shadow"].to_numpy()) == NEXT_DIM
    assert len(row["embedding"].to_numpy()) == 1024


def test_a_text_edit_queues_both_generations_and_voids_both_claims(bank, db, db_url):
    qid = bank.insert()
    ready_all(bank)
    begin(db_url)
    complete_shadow(db, claim_shadow(db))
    [s] = claim_shadow(db) or [None]  # nothing left
    assert s is None
    bank.update(qid, question_text="changed?")
    row = bank.row(qid)
    assert row["embedding_status"] == "stale" and row["embedding"] is not None
    # the shadow keeps no stale vector: it is not served, and would count as coverage
    assert row["embedding_shadow_status"] == "none" and row["embedding_shadow"] is None
    [s] = claim_shadow(db)
    bank.update(qid, choice_1="another")  # voids the shadow claim too
    assert complete_shadow(db, [s]) == set()
    [s] = claim_shadow(db)
    assert s.body == bank.text(qid) and complete_shadow(db, [s]) == {qid}
    # an edit of another column touches neither
    bank.update(qid, explanation="why")
    assert bank.row(qid)["embedding_shadow_status"] == "ready"


def test_a_client_may_not_write_the_shadow_columns(bank, db, db_url):
    qid = bank.insert()
    begin(db_url)
    for column, value in (
        ("embedding_shadow_status", "ready"),
        ("embedding_shadow_model", NEXT),
        ("embedding_shadow", vector_for("x", NEXT_DIM)),
        ("embedding_shadow_queued_at", None),
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="managed by the"):
            bank.update(qid, **{column: value})


def test_switch_is_refused_until_every_live_row_is_ready_then_swaps(bank, db, db_url):
    ids = [bank.insert() for _ in range(4)]
    ready_all(bank)
    begin(db_url)
    claimed = claim_shadow(db)
    complete_shadow(db, [c for c in claimed if c.id != ids[0]])
    with pytest.raises(MigrationError, match="1 live questions are not embedded by next-model"):
        migrator(db_url).generation("switch")
    assert generations(db)["served"][0] == TEST_MODEL  # nothing changed
    # a deleted row does not count
    db.execute("UPDATE study_questions SET deleted_at = now() WHERE id = %s", (ids[0],))
    migrator(db_url).generation("switch")
    assert generations(db) == {
        "served": (NEXT, NEXT_DIM, 3, 3),
        "previous": (TEST_MODEL, 1024, 3, 3),
    }
    row = bank.row(ids[1])
    assert row["embedding_model"] == NEXT and row["embedding_status"] == "ready"
    assert len(row["embedding"].to_numpy()) == NEXT_DIM
    assert row["embedding_shadow_model"] == TEST_MODEL
    assert db.execute("SELECT study_embed.embedding_dimension()").fetchone()[0] == NEXT_DIM
    # search compares the new model's vectors with a query of the new model only
    text = bank.text(ids[1])
    assert search(db, bank.user_id, vector_for(text, NEXT_DIM))[0] == ids[1]
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="served model next-model"):
        search(db, bank.user_id, vector_for(text))
    similar = db.execute(
        "SELECT id FROM study_embed.similar_questions(%s, %s)", (bank.user_id, ids[1])
    ).fetchall()
    assert {r[0] for r in similar} == {ids[2], ids[3]}
    # the status counts are the served generation's
    assert dict(db.execute("SELECT status, live FROM study_embed.status").fetchall())["ready"] == 3
    # the served queue is the new model's: an edit is embedded by it
    bank.update(ids[2], question_text="new text")
    [c] = bank.claim()
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="serves model next-model"):
        bank.complete([c])
    assert bank.complete([c], model=NEXT, vectors=[vector_for(c.body, NEXT_DIM)]) == {ids[2]}
    # ... and queued for the previous model too, which may be switched back to
    [s] = claim_shadow(db)
    assert s.id == ids[2]
    assert complete_shadow(db, [s], model=TEST_MODEL, dim=1024) == {ids[2]}


def _hnsw_indexes(db) -> dict[str, str]:
    return dict(
        db.execute(
            "SELECT c.relname, a.attname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " JOIN pg_am am ON am.oid = c.relam JOIN pg_attribute a ON a.attrelid = i.indrelid"
            " AND a.attnum = i.indkey[0] WHERE i.indrelid = 'study_questions'::regclass"
            " AND am.amname = 'hnsw' AND i.indisvalid"
        ).fetchall()
    )


def test_the_next_graph_is_built_once_at_the_switch_not_row_by_row(bank, db, db_url):
    """While the next generation is built it has no HNSW index (each vector written would be a
    graph insert, and a second one into the served graph); the switch builds it first."""
    ids = [bank.insert() for _ in range(3)]
    ready_all(bank)
    begin(db_url)
    assert _hnsw_indexes(db) == {"study_questions_embedding_hnsw": "embedding"}
    complete_shadow(db, claim_shadow(db))
    # the switch function alone refuses to serve a generation without its graph
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="no HNSW index yet"):
        db.execute("SELECT study_embed.switch_generation()")
    migrator(db_url).generation("switch")
    assert _hnsw_indexes(db) == {
        "study_questions_embedding_hnsw": "embedding",
        "study_questions_embedding_shadow_hnsw": "embedding_shadow",
    }
    # the served graph is the new model's, and search uses it
    db.execute("SET enable_seqscan = off")
    plan = "\n".join(
        r[0]
        for r in db.execute(
            "EXPLAIN SELECT id FROM study_questions WHERE deleted_at IS NULL AND embedding IS NOT"
            " NULL ORDER BY embedding <=> %s LIMIT 3",
            (vector_for(bank.text(ids[0]), NEXT_DIM),),
        )
    )
    assert "study_questions_embedding_hnsw" in plan
    # an interrupted build leaves an invalid index (a failed CREATE INDEX CONCURRENTLY; here
    # marked so in the catalog): the next switch drops it and builds it again
    migrator(db_url).generation("drop")
    begin(db_url, model="third-model", dim=8)
    complete_shadow(db, claim_shadow(db), model="third-model", dim=8)
    db.execute(
        "CREATE INDEX study_questions_embedding_shadow_hnsw ON study_questions"
        " USING hnsw (embedding_shadow vector_cosine_ops)"
    )
    db.execute(
        "UPDATE pg_index SET indisvalid = false"
        " WHERE indexrelid = 'study_questions_embedding_shadow_hnsw'::regclass"
    )
    migrator(db_url).generation("switch")
    assert _hnsw_indexes(db) == {
        "study_questions_embedding_hnsw": "embedding",
        "study_questions_embedding_shadow_hnsw": "embedding_shadow",
    }
    assert generations(db)["served"][0] == "third-model"


def test_switch_back_and_drop(bank, db, db_url):
    ids = [bank.insert() for _ in range(3)]
    ready_all(bank)
    begin(db_url)
    complete_shadow(db, claim_shadow(db))
    m = migrator(db_url)
    m.generation("switch")
    m.generation("switch")  # back: the previous generation covers every row still
    assert generations(db) == {
        "served": (TEST_MODEL, 1024, 3, 3),
        "previous": (NEXT, NEXT_DIM, 3, 3),
    }
    assert search(db, bank.user_id, vector_for(bank.text(ids[0])))[0] == ids[0]
    m.generation("drop")
    assert generations(db) == {"served": (TEST_MODEL, 1024, 3, 3)}
    columns = {
        r[0]
        for r in db.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'study_questions'::regclass"
            " AND NOT attisdropped AND attname LIKE 'embedding%%'"
        )
    }
    assert not any("shadow" in c for c in columns)
    assert claim_shadow(db) == []
    with pytest.raises(MigrationError, match="no model change is in progress"):
        m.generation("switch")
    # the app writes as before
    bank.update(ids[0], question_text="after the drop")
    assert bank.status(ids[0]) == "stale"


def test_a_forced_switch_serves_what_there_is(bank, db, db_url):
    ids = [bank.insert() for _ in range(3)]
    ready_all(bank)
    begin(db_url)
    complete_shadow(db, [c for c in claim_shadow(db) if c.id == ids[0]])
    migrator(db_url).generation("switch", force=True)
    assert generations(db)["served"] == (NEXT, NEXT_DIM, 3, 1)
    # the rows the new model has not embedded yet are waiting, and absent from search
    assert {bank.status(i) for i in ids[1:]} == {"pending"}
    found = search(db, bank.user_id, vector_for(bank.text(ids[1]), NEXT_DIM))
    assert found == [ids[0]]


def test_an_app_view_on_the_embedding_columns_stops_the_switch(bank, db, db_url):
    bank.insert()
    begin(db_url)
    db.execute("CREATE VIEW app_vectors AS SELECT id, embedding FROM study_questions")
    with pytest.raises(MigrationError, match="view public.app_vectors"):
        migrator(db_url).generation("switch", force=True)
    db.execute("DROP VIEW app_vectors")
    migrator(db_url).generation("switch", force=True)


def test_search_never_compares_a_vector_of_another_model(bank, db):
    """A row stored by another model (a bank from before generations) is never compared with
    the served model's query, as a candidate or as a source."""
    import hashlib

    a = bank.insert("served row", ("a", "b", "c", "d"))
    ready_all(bank)
    q, choices = "foreign row", ("a", "b", "c", "d")
    text = render(q, *choices)
    foreign = bank.insert(
        q,
        choices,
        embedding_status="ready",
        embedding_model="another-model",
        embedding=vector_for(text),
        embedding_source_sha256=hashlib.sha256(text.encode()).digest(),
    )
    assert search(db, bank.user_id, vector_for(text), k=10) == [a]
    assert (
        db.execute(
            "SELECT count(*) FROM study_embed.similar_questions(%s, %s)", (bank.user_id, foreign)
        ).fetchone()[0]
        == 0
    )
    hits = db.execute(
        "SELECT id FROM study_embed.search_questions_hybrid(%s, %s, 'foreign', 10)",
        (bank.user_id, vector_for(text)),
    ).fetchall()
    assert foreign not in {r[0] for r in hits}


def test_the_app_can_still_add_and_drop_a_column_of_its_table(db):
    """Nothing of study-embed binds study_questions' row type (a SQL-standard body taking the
    row did, and PostgreSQL then refused the app's own ALTER TABLE ... ADD COLUMN)."""
    db.execute("ALTER TABLE study_questions ADD COLUMN app_note text")
    db.execute("ALTER TABLE study_questions DROP COLUMN app_note")


def test_the_next_vector_lives_out_of_line_as_the_served_one(bank, db, db_url):
    """Both slots' vectors are TOASTed (0005_write_path.sql), so that after a switch the served
    row still has room on its page for a HOT update."""
    begin(db_url)
    storage = dict(
        db.execute(
            "SELECT attname, attstorage FROM pg_attribute WHERE attrelid = 'study_questions'"
            "::regclass AND attname IN ('embedding', 'embedding_shadow')"
        ).fetchall()
    )
    assert storage == {"embedding": "e", "embedding_shadow": "e"}


def test_uninstall_during_a_change_removes_the_next_generation_too(bank, db, db_url):
    qid = bank.insert()
    ready_all(bank)
    begin(db_url)
    complete_shadow(db, claim_shadow(db))
    migrator(db_url).uninstall()
    columns = {
        r[0]
        for r in db.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'study_questions'::regclass"
            " AND attnum > 0 AND NOT attisdropped AND attname LIKE 'embedding%'"
        )
    }
    assert columns == {"embedding", "embedding_status", "embedding_updated_at", "embedding_model"}
    # the served generation's vector and status stay, for the app's own worker
    status, kept = db.execute(
        "SELECT embedding_status, embedding IS NOT NULL FROM study_questions WHERE id = %s",
        (qid,),
    ).fetchone()
    assert (status, kept) == ("ready", True)
    # and study-embed comes back on it
    migrator(db_url).run()
    assert db.execute("SELECT count(*) FROM study_embed.generations").fetchone()[0] == 1


# -- the roles, each connected as itself ---------------------------------------------------------

OWNER_ONLY = [
    "SELECT study_embed.begin_generation('x', 8)",
    "SELECT study_embed.switch_generation(true)",
    "SELECT study_embed.drop_generation()",
    "SELECT * FROM study_embed.generations",
    "UPDATE study_embed.generations SET model = 'x'",
]


def test_a_non_owner_app_writes_during_a_change_and_searches_the_served_model(
    db, bank, db_url, login
):
    app = login("se_gen_app", "study_embed_app", dml=True)
    uid = app.execute("INSERT INTO users (email) VALUES ('gen@x') RETURNING id").fetchone()[0]
    tid = app.execute(
        "INSERT INTO study_topics (user_id, name) VALUES (%s, 't') RETURNING id", (uid,)
    ).fetchone()[0]
    insert = (
        "INSERT INTO study_questions (user_id, study_topic_id, question_text, choice_1,"
        " choice_2, choice_3, choice_4, correct_choice)"
        " VALUES (%s, %s, %s, 'a', 'b', 'c', 'd', 1) RETURNING id"
    )
    a = app.execute(insert, (uid, tid, "before the change")).fetchone()[0]
    ready_all(bank)
    begin(db_url)
    b = app.execute(insert, (uid, tid, "during the change")).fetchone()[0]
    app.execute("UPDATE study_questions SET question_text = 'edited' WHERE id = %s", (a,))
    app.execute("UPDATE study_questions SET explanation = 'x', correct_choice = 2")
    assert {bank.row(i)["embedding_shadow_status"] for i in (a, b)} == {"none"}
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="managed by the"):
        app.execute("UPDATE study_questions SET embedding_shadow_status = 'ready'")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="managed by the"):
        app.execute(
            "INSERT INTO study_questions (user_id, study_topic_id, question_text, choice_1,"
            " choice_2, choice_3, choice_4, correct_choice, embedding_shadow_status)"
            " VALUES (%s, %s, 'q', 'a', 'b', 'c', 'd', 1, 'ready')",
            (uid, tid),
        )
    assert app.execute("SELECT study_embed.served_model()").fetchone()[0] == TEST_MODEL
    roles = {r[0] for r in app.execute("SELECT role FROM study_embed.generation_status()")}
    assert roles == {"served", "next"}
    bank.complete(bank.claim(100))
    found = app.execute(
        "SELECT id FROM study_embed.search_questions(%s, %s, 5)",
        (uid, vector_for(bank.text(a))),
    ).fetchall()
    assert found[0][0] == a
    for statement in (*OWNER_ONLY, "SELECT * FROM study_embed.claim_shadow(1)"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute(statement)


def test_the_listener_builds_the_shadow_generation_and_nothing_more(db, bank, db_url, login):
    qid = bank.insert()
    begin(db_url)
    listener = login("se_gen_listener", "study_embed_listener")
    assert [
        tuple(r) for r in listener.execute("SELECT * FROM study_embed.generation_models()")
    ] == [
        ("served", TEST_MODEL, 1024),
        ("shadow", NEXT, NEXT_DIM),
    ]
    [c] = claim_shadow(listener)
    assert complete_shadow(listener, [c]) == {qid}
    bank.update(qid, question_text="again")
    [c] = claim_shadow(listener)
    failed = listener.execute(
        "SELECT * FROM study_embed.fail_shadow(%s, %s, %s)", ([c.id], [c.token], ["boom"])
    ).fetchall()
    assert failed == [(qid,)] and bank.row(qid)["embedding_shadow_status"] == "failed"
    db.execute(
        "UPDATE study_questions SET question_text = 'third' WHERE id = %s", (qid,)
    )  # an edit queues it again with a fresh budget
    [c] = claim_shadow(listener)
    released = listener.execute(
        "SELECT * FROM study_embed.release_shadow(%s, %s)", ([c.id], [c.token])
    ).fetchall()
    assert released == [(qid,)] and bank.row(qid)["embedding_shadow_status"] == "none"
    for statement in (
        *OWNER_ONLY,
        "UPDATE study_questions SET embedding_shadow_status = 'ready'",
        "SELECT embedding_shadow FROM study_questions",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            listener.execute(statement)


@pytest.mark.parametrize(
    "statement",
    [
        *OWNER_ONLY,
        "SELECT * FROM study_embed.claim_shadow(1)",
        "SELECT * FROM study_embed.complete_shadow('{}', '{}', '{}', 'x')",
        "SELECT * FROM study_embed.fail_shadow('{}', '{}', '{}')",
        "SELECT * FROM study_embed.release_shadow('{}', '{}')",
        "SELECT * FROM study_embed.generation_status()",
        "SELECT * FROM study_embed.generation_models()",
        "SELECT study_embed.served_model()",
        "UPDATE study_questions SET embedding_shadow = array_fill(1, ARRAY[384])::vector",
        "ALTER TABLE study_questions RENAME COLUMN embedding TO x",
    ],
)
def test_a_hostile_role_reaches_nothing_of_a_change(bank, db_url, login, statement):
    bank.insert()
    begin(db_url)
    evil = login("se_gen_hostile", dml=True)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        evil.execute(statement)
