"""The trust boundary, tested as the roles it is about (never as the superuser).

- an app role that does not own the tables, with ordinary DML grants: every kind of write works
  and the status counts stay exact;
- a hostile role (the same DML grants, and CREATE on a schema pgvector sits in): whatever it sets
  in its session and whatever function it can reach, it cannot forge a pipeline transition,
  shadow a function the pipeline calls, or read or change another user's rows;
- a role with study_embed_app but no SELECT on study_questions reads no question text;
- the schema's own shape: definer functions owned by the pipeline role, no name resolved in a
  writable schema, plpgsql_check clean.
"""

from __future__ import annotations

import hashlib

import numpy as np
import psycopg
import pytest
from psycopg import sql

from ..helpers import QuestionBank, render, vector_for


def _embed_all(bank: QuestionBank, vectors: dict[int, np.ndarray] | None = None) -> None:
    """What the listener does, through the queue API (as the test's owner connection)."""
    claimed = bank.claim(1000)
    vectors = vectors or {}
    bank.complete(claimed, vectors=[vectors.get(c.id, vector_for(c.body)) for c in claimed])


def _true_counts(db) -> dict[tuple[str, bool], int]:
    return {
        (s, d): n
        for s, d, n in db.execute(
            "SELECT embedding_status, deleted_at IS NOT NULL, count(*) FROM study_questions"
            " GROUP BY 1, 2"
        )
    }


def _view_counts(db) -> dict[tuple[str, bool], int]:
    out = {}
    for status, live, deleted, _ in db.execute("SELECT * FROM study_embed.status"):
        if live:
            out[(status, False)] = live
        if deleted:
            out[(status, True)] = deleted
    return out


# ------------------------------------------------------------------------------ the app role


def test_a_non_owner_app_role_does_every_kind_of_write(db, bank, login):
    app = login("se_app_writer", "study_embed_app", dml=True)
    assert (
        app.execute(
            "SELECT pg_has_role(current_user, (SELECT relowner FROM pg_class"
            " WHERE oid = 'study_questions'::regclass), 'MEMBER')"
        ).fetchone()[0]
        is False
    )
    uid = app.execute("INSERT INTO users (email) VALUES ('app@x') RETURNING id").fetchone()[0]
    tid = app.execute(
        "INSERT INTO study_topics (user_id, name) VALUES (%s, 't') RETURNING id", (uid,)
    ).fetchone()[0]
    ids = [
        r[0]
        for r in app.execute(
            "INSERT INTO study_questions (user_id, study_topic_id, question_text, choice_1,"
            " choice_2, choice_3, choice_4, correct_choice)"
            " SELECT %s, %s, 'q' || g, 'a', 'b', 'c', 'd', 1"
            " FROM generate_series(1, 5) g RETURNING id",
            (uid, tid),
        )
    ]
    one = app.execute(
        "INSERT INTO study_questions (user_id, study_topic_id, question_text, choice_1, choice_2,"
        " choice_3, choice_4, correct_choice) VALUES (%s, %s, 'single', 'a', 'b', 'c', 'd', 2)"
        " RETURNING id, embedding_status",
        (uid, tid),
    ).fetchone()
    assert one[1] == "none"
    ids.append(one[0])
    _embed_all(bank)
    a, b, c, d, e, f = ids
    assert {bank.status(i) for i in ids} == {"ready"}

    # unrelated columns of a ready row: the row stays ready, its vector untouched
    before = bank.row(a)["embedding"].to_numpy()
    app.execute(
        "UPDATE study_questions SET is_active = false, correct_choice = 3,"
        " explanation = 'why', subject = 's', scope = 'sc', exam_name = 'e'"
        " WHERE id = %s",
        (a,),
    )
    assert bank.status(a) == "ready" and np.array_equal(bank.row(a)["embedding"].to_numpy(), before)
    # a text edit queues it again; asking for a re-embed too
    app.execute("UPDATE study_questions SET question_text = 'edited' WHERE id = %s", (b,))
    app.execute("UPDATE study_questions SET embedding_status = 'stale' WHERE id = %s", (c,))
    assert (bank.status(b), bank.status(c)) == ("stale", "stale")
    # the whole row written back with the values it read (an ORM's full update): no change
    row = app.execute("SELECT * FROM study_questions WHERE id = %s", (d,)).fetchone()
    cols = [col.name for col in app.execute("SELECT * FROM study_questions LIMIT 0").description]
    app.execute(
        sql.SQL("UPDATE study_questions SET {} WHERE id = %s").format(
            sql.SQL(", ").join(
                sql.SQL("{} = %s").format(sql.Identifier(k)) for k in cols if k != "id"
            )
        ),
        [v for k, v in zip(cols, row, strict=True) if k != "id"] + [d],
    )
    assert bank.status(d) == "ready"
    # soft delete, restore, hard delete, attempts
    app.execute("UPDATE study_questions SET deleted_at = now() WHERE id = %s", (e,))
    app.execute(
        "INSERT INTO study_question_attempts (user_id, study_question_id, study_topic_id,"
        " selected_choice, correct_choice, is_correct) VALUES (%s, %s, %s, 2, 1, false)",
        (uid, a, tid),
    )
    app.execute("DELETE FROM study_questions WHERE id = %s", (f,))
    app.execute("UPDATE study_questions SET deleted_at = NULL WHERE id = %s", (e,))
    app.execute("UPDATE study_questions SET deleted_at = now() WHERE id = %s", (e,))
    # the counts stay exact, before and after the tick folds them
    assert _view_counts(db) == _true_counts(db)
    db.execute("SELECT study_embed.tick()")
    assert _view_counts(db) == _true_counts(db)
    # and the app reads through the search functions, for its own user
    assert [
        r[0]
        for r in app.execute("SELECT id FROM study_embed.similar_questions(%s, %s, 10)", (uid, a))
    ] != []


def test_app_role_gets_one_error_class_for_every_reserved_write(bank, login):
    app = login("se_app_writer", "study_embed_app", dml=True)
    qid = bank.insert()
    _embed_all(bank)
    attempts = [
        ("UPDATE study_questions SET embedding_status = 'none' WHERE id = %s", (qid,)),
        ("UPDATE study_questions SET embedding_status = 'pending' WHERE id = %s", (qid,)),
        ("UPDATE study_questions SET embedding_model = 'x' WHERE id = %s", (qid,)),
        ("UPDATE study_questions SET embedding = %s WHERE id = %s", (vector_for("x"), qid)),
        (
            "INSERT INTO study_questions (user_id, study_topic_id, question_text, choice_1,"
            " choice_2, choice_3, choice_4, correct_choice, embedding_status)"
            " VALUES (%s, %s, 'q', 'a', 'b', 'c', 'd', 1, 'failed')",
            (bank.user_id, bank.topic_id),
        ),
    ]
    for statement, params in attempts:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute(statement, params)
    assert bank.status(qid) == "ready"


# ------------------------------------------------------------------------------ a hostile role


ACTORS = ["claim", "complete", "fail", "release", "requeue", "client", "pipeline", ""]


@pytest.mark.parametrize("actor", ACTORS)
def test_no_session_setting_lets_a_client_pose_as_the_pipeline(bank, login, actor):
    evil = login("se_hostile", dml=True)
    qid = bank.insert("q", ("a", "b", "c", "d"))
    text = render("q", "a", "b", "c", "d")
    forged = vector_for("anything but the text")
    evil.execute("SELECT set_config('study_embed.actor', %s, false)", (actor,))
    with evil.transaction():
        evil.execute("SELECT set_config('study_embed.actor', %s, true)", (actor,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            evil.execute(
                "UPDATE study_questions SET embedding_status = 'pending',"
                " embedding_claim_token = gen_random_uuid(), embedding_due_at = now() + '1 h'"
                " WHERE id = %s",
                (qid,),
            )
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        evil.execute(
            "UPDATE study_questions SET embedding_status = 'ready', embedding = %s,"
            " embedding_model = 'm', embedding_source_sha256 = %s, embedding_due_at = NULL,"
            " embedding_queued_at = NULL WHERE id = %s",
            (forged, hashlib.sha256(text.encode()).digest(), qid),
        )
    # nor can it insert a row that claims to be embedded already, hash and all
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        evil.execute(
            "INSERT INTO study_questions (user_id, study_topic_id, question_text, choice_1,"
            " choice_2, choice_3, choice_4, correct_choice, embedding, embedding_status,"
            " embedding_model, embedding_source_sha256)"
            " VALUES (%s, %s, 'q', 'a', 'b', 'c', 'd', 1, %s, 'ready', 'm', %s)",
            (bank.user_id, bank.topic_id, forged, hashlib.sha256(text.encode()).digest()),
        )
    r = bank.row(qid)
    assert r["embedding_status"] == "none" and r["embedding"] is None
    assert (
        bank.conn.execute(
            "SELECT count(*) FROM study_questions WHERE embedding_status = 'ready'"
        ).fetchone()[0]
        == 0
    )


@pytest.mark.parametrize(
    "statement",
    [
        "SET ROLE study_embed_pipeline",
        "SET ROLE study_embed_listener",
        "SET session_replication_role = replica",
        "ALTER TABLE study_questions DISABLE TRIGGER USER",
        "SELECT study_embed._set_actor('complete')",
        "SELECT * FROM study_embed.claim(10)",
        "SELECT study_embed.requeue_model('x')",
        "SELECT study_embed.requeue_changed_text()",
        "SELECT study_embed.retry_failed()",
        "SELECT study_embed.tick()",
        "SELECT study_embed.detect_duplicates()",
        "SELECT study_embed.dismiss_duplicate(1, 1, 2)",
        "SELECT study_embed.recount()",
        "INSERT INTO study_embed.status_counts VALUES ('ready', false, 1000)",
        "DELETE FROM study_embed.status_counts",
        "UPDATE study_embed.settings SET max_attempts = 1",
        "UPDATE study_embed.duplicate_candidates SET dismissed_at = now()",
        "DELETE FROM study_embed.duplicate_queue",
        "SELECT * FROM study_embed.duplicate_pairs",
        "SELECT * FROM study_embed.status",
        "CREATE FUNCTION study_embed.render_question(varchar) RETURNS text LANGUAGE sql RETURN 'x'",
        "SELECT * FROM study_embed.adopt('BAAI/bge-m3')",
        "INSERT INTO study_embed.adopted_source (question_id, source_sha256) VALUES (1, 'x')",
        "SELECT * FROM study_embed.adopted_source",
        "UPDATE study_embed.adoption SET finished_at = NULL, after_id = 0",
        "DELETE FROM study_embed.adoption_outcomes",
        "SELECT study_embed._average_linkage(NULL, NULL, 0.5)",
        "SELECT * FROM study_embed._representatives(NULL, NULL)",
    ],
)
def test_hostile_role_reaches_nothing_of_the_pipeline(bank, login, statement):
    evil = login("se_hostile", dml=True)
    bank.insert()
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        evil.execute(statement)


def test_public_may_execute_only_pure_helpers(db, login):
    """Anything new granted to every role gets reviewed here."""
    evil = login("se_nobody")
    reachable = {
        r[0]
        for r in evil.execute(
            "SELECT p.proname FROM pg_proc p WHERE p.pronamespace = 'study_embed'::regnamespace"
            " AND has_function_privilege(p.oid, 'EXECUTE')"
        )
    }
    assert reachable == {
        "render_question",
        "text_sha256",
        "transition_allowed",
        "pipeline_role",
        "_actor",
        "_vectors_differ",
        "_cosine_distance",
        "channel",
        "_inconsistency",
        "_guard_insert",
        "_guard_update",
        "answer_key",
        # a row from before study-embed: queued by its first write (045_adoption.sql)
        "_queued_from_before",
        "_queue_unadopted",
        "_adopted",
        # a model change in progress: the shadow slot's guards (046_generations.sql)
        "_shadow_inconsistency",
        "_guard_shadow_insert",
        "_guard_shadow",
    }
    # and _actor() says `client` for it, whatever it sets
    evil.execute("SELECT set_config('study_embed.actor', 'complete', false)")
    assert evil.execute("SELECT study_embed._actor()").fetchone()[0] == "client"
    readable = {
        r[0]
        for r in evil.execute(
            "SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'study_embed'::regnamespace"
            " AND c.relkind IN ('r', 'v', 'm') AND has_table_privilege(c.oid, 'SELECT')"
        )
    }
    assert readable == set()


SHADOWS = {
    # exact-type matches that would beat pg_catalog's polymorphic functions on a search_path
    # that included public
    "cardinality(bigint[]) RETURNS integer": "SELECT pg_catalog.cardinality($1)",
    "cardinality(text[]) RETURNS integer": "SELECT pg_catalog.cardinality($1)",
    "cardinality(integer[]) RETURNS integer": "SELECT pg_catalog.cardinality($1)",
    "array_remove(text[], text) RETURNS text[]": "SELECT pg_catalog.array_remove($1, $2)",
    "array_to_string(text[], text) RETURNS text": "SELECT pg_catalog.array_to_string($1, $2)",
    "array_to_string(integer[], text, text) RETURNS text": (
        "SELECT pg_catalog.array_to_string($1, $2, $3)"
    ),
    "unnest(bigint[]) RETURNS SETOF bigint": "SELECT pg_catalog.unnest($1)",
    "quote_nullable(text) RETURNS text": "SELECT pg_catalog.quote_nullable($1)",
    "format(text, text) RETURNS text": "SELECT pg_catalog.format($1, $2)",
    "array_fill(integer, integer[]) RETURNS integer[]": "SELECT pg_catalog.array_fill($1, $2)",
    "convert_to(text, text) RETURNS bytea": "SELECT pg_catalog.convert_to($1, $2::name)",
    "string_to_array(text, text) RETURNS text[]": "SELECT pg_catalog.string_to_array($1, $2)",
}


def test_a_function_planted_in_a_writable_schema_never_runs(db, bank, login):
    """pgvector in public, and public writable by every role (the default before PostgreSQL 15):
    the hostile role plants exact-type matches for functions the pipeline calls.  None of them
    ever runs, whoever calls the pipeline (the listener, the app, pg_cron)."""
    db.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
    db.execute("CREATE TABLE public.pwned (who name, what text)")
    db.execute("GRANT INSERT, SELECT ON public.pwned TO PUBLIC")
    evil = login("se_hostile", dml=True)
    for signature, body in SHADOWS.items():
        name = signature.split("(")[0]
        evil.execute(
            f"CREATE FUNCTION public.{signature} LANGUAGE sql AS $$"
            f" INSERT INTO public.pwned VALUES (current_user, '{name}'); {body} $$"
        )
    listener = login("se_listener", "study_embed_listener")
    app = login("se_app_writer", "study_embed_app", dml=True)
    # the app writes, the listener runs the queue, the tick runs, the app searches
    a = bank.insert("photosynthesis?", ("a", "b", "c", "d"))
    b_ = bank.insert("photosynthesis happens where?", ("a", "b", "c", "d"))
    c = bank.insert("three")
    # the answer key changes for both (near-duplicates share their correct choice's text)
    app.execute("UPDATE study_questions SET correct_choice = 2 WHERE id = ANY(%s)", ([a, b_],))
    rows = listener.execute("SELECT * FROM study_embed.claim(10)").fetchall()
    by_id = {r[0]: r for r in rows}
    listener.execute(
        "SELECT * FROM study_embed.complete(%s, %s, %s, 'test-model')",
        ([a, b_], [by_id[a][1], by_id[b_][1]], [vector_for("same")] * 2),
    )
    listener.execute(
        "SELECT * FROM study_embed.fail(%s, %s, %s, true)", ([c], [by_id[c][1]], ["boom"])
    )
    listener.execute("SELECT study_embed.tick()")
    listener.execute("SELECT study_embed.requeue_model('m2')")
    app.execute("UPDATE study_questions SET question_text = 'edited' WHERE id = %s", (c,))
    assert app.execute("SELECT count(*) FROM study_embed.duplicate_pairs").fetchone()[0] == 1
    app.execute("SELECT * FROM study_embed.similar_questions(%s, %s)", (bank.user_id, a)).fetchall()
    db.execute(
        "INSERT INTO study_question_attempts (user_id, study_question_id, study_topic_id,"
        " selected_choice, correct_choice, is_correct) SELECT %s, id, %s, 1, 2, false"
        " FROM study_questions WHERE id = ANY(%s)",
        (bank.user_id, bank.topic_id, [a, b_]),
    )
    clustered = app.execute(
        "SELECT question_id, cluster_name FROM study_embed.wrong_answer_clusters(%s)",
        (bank.user_id,),
    ).fetchall()
    assert {q for q, _ in clustered} == {a, b_} and all(name for _, name in clustered)
    app.execute("SELECT study_embed.dismiss_duplicate(%s, %s, %s)", (bank.user_id, a, b_))
    # the shadows work when called by name: they were callable all along
    evil.execute("SELECT public.cardinality(ARRAY[1::bigint])")
    assert db.execute("SELECT who, what FROM public.pwned").fetchall() == [
        ("se_hostile", "cardinality")
    ]


def test_no_function_resolves_a_name_in_a_schema_others_can_write(db):
    rows = db.execute(
        "SELECT p.oid::regprocedure::text, p.prosecdef, r.rolname, p.proconfig,"
        " p.prosqlbody IS NOT NULL"
        " FROM pg_proc p JOIN pg_roles r ON r.oid = p.proowner"
        " WHERE p.pronamespace = 'study_embed'::regnamespace"
    ).fetchall()
    assert len(rows) > 30
    for name, definer, owner, config, sql_body in rows:
        path = next(
            (c.split("=", 1)[1] for c in config or [] if c.startswith("search_path=")), None
        )
        if path is None:
            # no SET clause: only a SQL-standard body, whose names are bound when it is created
            assert sql_body and not definer, name
        else:
            assert [s.strip() for s in path.split(",")] == ["pg_catalog", "pg_temp"], name
        if definer:
            assert owner == "study_embed_pipeline", name


def test_migrate_warns_when_pgvector_sits_in_a_schema_everyone_can_write(db, db_url):
    from study_embed.migrate import Migrator

    said: list[str] = []
    db.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
    Migrator(db_url, cron=False, log=said.append).run()
    assert any("WARNING" in s and "REVOKE CREATE ON SCHEMA public FROM PUBLIC" in s for s in said)
    db.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    said.clear()
    Migrator(db_url, cron=False, log=said.append).run()
    assert not any("WARNING" in s for s in said)


# ------------------------------------------------------------------------------ tenants


def test_a_role_without_select_reads_no_question_text(db, bank, login):
    reader = login("se_no_select", "study_embed_app")
    a = bank.insert("secret question one", ("a", "b", "c", "d"))
    b_ = bank.insert("secret question two", ("a", "b", "c", "d"))
    _embed_all(bank, {a: vector_for("same"), b_: vector_for("same")})
    db.execute("SELECT study_embed.detect_duplicates()")
    uid, q = bank.user_id, vector_for("same")
    for statement, params in [
        ("SELECT * FROM study_embed.duplicate_pairs", None),
        ("SELECT * FROM study_embed.similar_questions(%s, %s)", (uid, a)),
        ("SELECT * FROM study_embed.explanation_context(%s, %s)", (uid, a)),
        ("SELECT * FROM study_embed.search_questions(%s, %s)", (uid, q)),
        ("SELECT * FROM study_embed.find_duplicates(%s, %s)", (uid, q)),
        ("SELECT * FROM study_embed.wrong_answer_clusters(%s)", (uid,)),
        ("SELECT * FROM study_embed._nearest(%s, %s, 5)", (uid, q)),
        ("SELECT * FROM study_embed.failures", None),
        ("SELECT * FROM study_questions", None),
    ]:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute(statement, params)
    # whatever else it may select from holds no text
    readable = [
        r[0]
        for r in reader.execute(
            "SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'study_embed'::regnamespace"
            " AND c.relkind IN ('r', 'v') AND has_table_privilege(c.oid, 'SELECT')"
        )
    ]
    assert set(readable) == {
        "settings",
        "model_thresholds",
        "duplicate_candidates",
        "duplicate_pairs",
        "status",  # counts per status, for the UI's first page
    }
    for relname in readable:
        try:
            rows = reader.execute(
                sql.SQL("SELECT * FROM study_embed.{}").format(sql.Identifier(relname))
            ).fetchall()
        except psycopg.errors.InsufficientPrivilege:
            continue
        assert "secret" not in repr(rows), relname


def test_search_entry_points_return_nothing_of_another_user(db, bank, login):
    app = login("se_app_writer", "study_embed_app", dml=True)
    mine = bank.insert("mine", ("a", "b", "c", "d"), explanation="my explanation")
    twin = bank.insert("mine again", ("a", "b", "c", "d"), explanation="also mine")
    other = bank.new_user()
    theirs = bank.insert("theirs", ("a", "b", "c", "d"), user=other, explanation="their secret")
    theirs_twin = bank.insert(
        "theirs again", ("a", "b", "c", "d"), user=other, explanation="their other secret"
    )
    _embed_all(bank, {q: vector_for("same") for q in (mine, twin, theirs, theirs_twin)})
    db.execute("SELECT study_embed.detect_duplicates()")
    me = bank.user_id
    # the question is another user's: nothing, not even an error that tells it exists
    assert (
        app.execute("SELECT * FROM study_embed.similar_questions(%s, %s)", (me, theirs)).fetchall()
        == []
    )
    assert (
        app.execute(
            "SELECT * FROM study_embed.explanation_context(%s, %s)", (me, theirs)
        ).fetchall()
        == []
    )
    assert [
        r[0]
        for r in app.execute("SELECT id FROM study_embed.similar_questions(%s, %s)", (me, mine))
    ] == [twin]
    assert [
        r[0]
        for r in app.execute("SELECT id FROM study_embed.explanation_context(%s, %s)", (me, mine))
    ] == [twin]
    # dismissing: only a pair of the user named, and only through the function
    assert (
        app.execute(
            "SELECT study_embed.dismiss_duplicate(%s, %s, %s)", (me, theirs, theirs_twin)
        ).fetchone()[0]
        is False
    )
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        app.execute("UPDATE study_embed.duplicate_candidates SET dismissed_at = now()")
    open_pairs = {
        r[0]
        for r in db.execute(
            "SELECT user_id FROM study_embed.duplicate_candidates WHERE dismissed_at IS NULL"
        )
    }
    assert open_pairs == {me, other[0]}
    assert (
        app.execute(
            "SELECT study_embed.dismiss_duplicate(%s, %s, %s)", (me, twin, mine)
        ).fetchone()[0]
        is True
    )
    assert app.execute("SELECT user_id FROM study_embed.duplicate_pairs").fetchall() == [
        (other[0],)
    ]


# ------------------------------------------------------------------------------ template change


def test_a_change_of_the_rendered_text_breaks_no_write(db, bank, login):
    app = login("se_app_writer", "study_embed_app", dml=True)
    ids = [bank.insert() for _ in range(3)]
    _embed_all(bank)
    before = {i: bank.row(i)["embedding"].to_numpy() for i in ids}
    db.execute("""
        CREATE OR REPLACE FUNCTION study_embed.render_question(
            question_text text, choice_1 text, choice_2 text, choice_3 text, choice_4 text)
        RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
        RETURN '문제: ' || question_text || E'\\n보기:\\n1. ' || choice_1 || E'\\n2. ' || choice_2
               || E'\\n3. ' || choice_3 || E'\\n4. ' || choice_4 || E'\\n'""")
    for i in ids:
        app.execute("UPDATE study_questions SET is_active = false WHERE id = %s", (i,))
        app.execute("UPDATE study_questions SET embedding_status = 'ready' WHERE id = %s", (i,))
    assert {bank.status(i) for i in ids} == {"ready"}
    # the migration that ships such a change queues the rows; old vectors keep serving
    assert db.execute("SELECT requeued FROM study_embed.requeue_changed_text()").fetchone()[0] == 3
    assert {bank.status(i) for i in ids} == {"stale"}
    assert all(np.array_equal(bank.row(i)["embedding"].to_numpy(), before[i]) for i in ids)
    claimed = bank.claim(10)
    assert all(c.body.endswith("\n") for c in claimed)
    assert bank.complete(claimed) == set(ids)
    assert db.execute("SELECT requeued FROM study_embed.requeue_changed_text()").fetchone()[0] == 0


# ------------------------------------------------------------------------------ plpgsql_check


def test_plpgsql_check_finds_nothing(db):
    db.execute("CREATE EXTENSION IF NOT EXISTS plpgsql_check")
    # the next generation's functions name its columns, which exist only during a model change
    db.execute("SELECT study_embed.begin_generation('next-model', 384)")
    functions = db.execute(
        "SELECT p.oid::regprocedure::text, p.prorettype = 'trigger'::regtype,"
        "       p.proname = '_count_statement'"
        " FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang"
        " WHERE p.pronamespace = 'study_embed'::regnamespace AND l.lanname = 'plpgsql'"
        " ORDER BY 2"
    ).fetchall()
    assert len(functions) >= 15
    findings = []
    for name, is_trigger, transition in functions:
        for level, message, lineno, detail in db.execute(
            "SELECT level, message, lineno, detail FROM plpgsql_check_function_tb("
            " %s::regprocedure, coalesce(%s::regclass, 0), newtable => %s, oldtable => %s,"
            " extra_warnings => true, performance_warnings => true, security_warnings => true)",
            (
                name,
                "public.study_questions" if is_trigger else None,
                "new_rows" if transition else None,
                "old_rows" if transition else None,
            ),
        ):
            findings.append(f"{name} line {lineno}: {level}: {message} ({detail})")
    assert findings == [], "\n".join(findings)
