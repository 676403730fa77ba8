"""The one loader of app rows (study_embed_dev.rows), as the tests, the demo, make eval and the
benchmarks use it."""

from __future__ import annotations

from study_embed_dev.rows import (
    add_attempts,
    add_question,
    add_topic,
    add_user,
    one_value,
    vector_index_built_after,
)


def test_rows_are_written_as_an_app_writes_them(db):
    uid = add_user(db, "loader@example.com")
    tid = add_topic(db, uid, "생명과학")
    qid = add_question(
        db, uid, tid, "광합성?", ("엽록체", "핵", "리보솜", "액포"), 1, subject="생물", scope="세포"
    )
    row = db.execute(
        "SELECT user_id, study_topic_id, choice_4, correct_choice, subject, scope,"
        " embedding_status FROM study_questions WHERE id = %s",
        (qid,),
    ).fetchone()
    assert row == (uid, tid, "액포", 1, "생물", "세포", "none")  # the triggers ran: queued
    assert add_attempts(db, [(uid, qid, tid, 2, 1, None), (uid, qid, tid, 1, 1, None)]) == 2
    assert db.execute(
        "SELECT is_correct FROM study_question_attempts WHERE study_question_id = %s ORDER BY id",
        (qid,),
    ).fetchall() == [(False,), (True,)]


def test_one_value_without_parameters_keeps_a_percent_sign(db):
    assert one_value(db, "SELECT 'minji@%'") == "minji@%"
    assert one_value(db, "SELECT %s::int + 1", (41,)) == 42


def test_a_bulk_load_gets_the_vector_index_back_as_the_migrations_made_it(db):
    hnsw = (
        "SELECT indexname, indexdef FROM pg_indexes"
        " WHERE tablename = 'study_questions' AND indexdef LIKE '%% USING hnsw %%'"
    )
    before = db.execute(hnsw).fetchall()
    assert len(before) == 1
    with db.transaction(), vector_index_built_after(db):
        assert db.execute(hnsw).fetchall() == []
    assert db.execute(hnsw).fetchall() == before
