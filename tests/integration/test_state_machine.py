"""The status state machine: every transition, every recompute rule, every illegal write."""

from __future__ import annotations

import re
from datetime import timedelta

import numpy as np
import psycopg
import pytest
from psycopg import sql

from ..helpers import legacy_ready, render, vector_for

CONTENT = ["question_text", "choice_1", "choice_2", "choice_3", "choice_4"]
NON_CONTENT = {
    "correct_choice": 3,
    "explanation": "because",
    "subject": "math",
    "scope": "ch. 2",
    "exam_name": "KSAT",
    "exam_round": "2024-1",
    "source_note": "book",
    "is_active": False,
    "ai_explanation": "ai says",
    "ai_explanation_status": "ready",
    "ai_explanation_model": "m",
}


def make_ready(bank, qid=None) -> int:
    qid = qid or bank.insert()
    claimed = bank.claim(100)
    assert bank.complete([c for c in claimed if c.id == qid]) == {qid}
    bank.release([c for c in claimed if c.id != qid])
    return qid


def test_render_is_exactly_the_mission_text(db):
    got = db.execute(
        "SELECT study_embed.render_question(%s, %s, %s, %s, %s)",
        ("다음 중 옳은 것은?", "가", "나", "다", "라"),
    ).fetchone()[0]
    assert got == "문제: 다음 중 옳은 것은?\n보기:\n1. 가\n2. 나\n3. 다\n4. 라"


def test_insert_starts_none_and_is_queued(bank):
    qid = bank.insert("What is 2+2?", ("1", "2", "3", "4"), subject="math", scope="arith")
    r = bank.row(qid)
    assert r["embedding_status"] == "none"
    assert r["embedding"] is None and r["embedding_due_at"] is not None
    [c] = bank.claim()
    # subject and scope are left out of the embedded text
    assert (c.id, c.body) == (qid, render("What is 2+2?", "1", "2", "3", "4"))


def test_claim_complete_makes_ready_with_hash_and_model(bank):
    qid = bank.insert()
    [c] = bank.claim()
    assert bank.status(qid) == "pending"
    assert bank.complete([c]) == {qid}
    r = bank.row(qid)
    assert r["embedding_status"] == "ready" and r["embedding_model"] == "test-model"
    assert np.allclose(r["embedding"].to_numpy(), vector_for(c.body))
    assert r["embedding_claim_token"] is None and r["embedding_due_at"] is None
    assert r["embedding_updated_at"] is not None
    import hashlib

    assert bytes(r["embedding_source_sha256"]) == hashlib.sha256(c.body.encode()).digest()


@pytest.mark.parametrize("column", CONTENT)
@pytest.mark.parametrize("start", ["none", "pending", "ready", "failed", "stale"])
def test_content_edit_makes_stale_from_any_status(bank, column, start):
    qid = bank.insert()
    if start == "pending":
        bank.claim()
    elif start == "ready":
        make_ready(bank, qid)
    elif start == "failed":
        bank.fail(bank.claim())
    elif start == "stale":
        make_ready(bank, qid)
        bank.update(qid, question_text="changed before")
    assert bank.status(qid) == start
    before = bank.row(qid)
    bank.update(qid, **{column: before[column] + " (edited)"})
    after = bank.row(qid)
    assert after["embedding_status"] == "stale"
    assert after["embedding_claim_token"] is None
    assert after["embedding_attempts"] == 0
    # the previous embedding is kept (and keeps serving) until a new one replaces it
    if before["embedding"] is not None:
        assert after["embedding"] == before["embedding"]


@pytest.mark.parametrize("column,value", NON_CONTENT.items())
@pytest.mark.parametrize("start", ["none", "ready", "failed"])
def test_non_content_edit_never_changes_status(bank, column, value, start):
    qid = bank.insert()
    if start == "ready":
        make_ready(bank, qid)
    elif start == "failed":
        bank.fail(bank.claim(), retryable=False)
    before = bank.row(qid)
    bank.update(qid, **{column: value})
    after = bank.row(qid)
    assert after[column] == value
    for col in (
        "embedding_status",
        "embedding",
        "embedding_due_at",
        "embedding_attempts",
        "embedding_queued_at",
    ):
        assert after[col] == before[col], col


@pytest.mark.parametrize("column", CONTENT)
def test_edit_to_identical_text_is_not_stale(bank, column):
    qid = make_ready(bank)
    bank.update(qid, **{column: bank.row(qid)[column]})
    assert bank.status(qid) == "ready"


def test_edit_between_claim_and_complete_never_ends_ready(bank):
    qid = bank.insert("old text")
    [c] = bank.claim()
    bank.update(qid, question_text="new text")
    assert bank.complete([c]) == set()  # the old vector is refused
    r = bank.row(qid)
    assert r["embedding_status"] == "stale" and r["embedding"] is None
    [c2] = bank.claim()
    assert "new text" in c2.body
    assert bank.complete([c2]) == {qid}
    assert np.allclose(bank.row(qid)["embedding"].to_numpy(), vector_for(bank.text(qid)))


def test_stale_complete_after_reclaim_is_refused(bank):
    qid = bank.insert()
    [old] = bank.claim(lease="1 microsecond")
    [new] = bank.claim()  # lease expired: someone else takes over
    assert new.id == qid and new.token != old.token
    assert bank.complete([old]) == set()
    assert bank.complete([new]) == {qid}


@pytest.mark.parametrize("status", ["ready", "pending", "failed", "none", "bogus"])
def test_client_cannot_set_status_by_hand(bank, status):
    qid = bank.insert() if status != "none" else make_ready(bank)
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="cannot go from"):
        bank.update(qid, embedding_status=status)


@pytest.mark.parametrize(
    "column,value",
    [
        ("embedding", vector_for("x")),
        ("embedding_model", "m"),
        ("embedding_attempts", 3),
        ("embedding_due_at", None),
        ("embedding_last_error", "e"),
        ("embedding_claim_token", None),
    ],
)
def test_client_cannot_write_embedding_bookkeeping(bank, column, value):
    qid = bank.insert()
    if column == "embedding_claim_token":
        bank.claim()
        value = "00000000-0000-0000-0000-000000000000"
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="managed by the embedding"):
        bank.update(qid, **{column: value})


# A mistake a pipeline function could make, each as the update it would run: the actor it set
# (none at all first: it is then a client), the columns it writes, and what its guard says.
PIPELINE_MISTAKES = {
    "no operation named": (
        "",
        "SET embedding_attempts = 1",
        psycopg.errors.InsufficientPrivilege,
        "embedding_attempts is managed by the embedding pipeline",
    ),
    "a transition that is not its own": (
        "fail",
        "SET embedding_status = 'ready', embedding_claim_token = NULL",
        psycopg.errors.CheckViolation,
        "cannot go from pending to 'ready' (by study_embed.fail)",
    ),
    "the bookkeeping of the new status missing": (
        "fail",
        "SET embedding_status = 'failed', embedding_claim_token = NULL,"
        " embedding_last_error = NULL",
        psycopg.errors.CheckViolation,
        "inconsistent: it has no error recorded",
    ),
}


@pytest.mark.parametrize("mistake", PIPELINE_MISTAKES)
def test_the_pipelines_own_updates_are_checked(bank, db, mistake):
    """The guard checks the pipeline's own updates too: its transitions and the bookkeeping of
    the new status (_inconsistency).  Checked as the pipeline role: a SECURITY DEFINER function
    it owns makes the mistake, as one of its queue functions would."""
    actor, assignments, error, message = PIPELINE_MISTAKES[mistake]
    qid = bank.insert()
    [claimed] = bank.claim(1)
    db.execute(
        sql.SQL(
            "CREATE FUNCTION study_embed.test_mistake(qid bigint) RETURNS void"
            " LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp"
            " AS $$ BEGIN PERFORM set_config('study_embed.actor', {actor}, true);"
            " UPDATE public.study_questions {assignments} WHERE id = qid; END $$"
        ).format(actor=sql.Literal(actor), assignments=sql.SQL(assignments))
    )
    db.execute("ALTER FUNCTION study_embed.test_mistake(bigint) OWNER TO study_embed_pipeline")
    try:
        with pytest.raises(error, match=re.escape(message)):
            db.execute("SELECT study_embed.test_mistake(%s)", (qid,))
        assert bank.row(qid)["embedding_claim_token"] == claimed.token
    finally:
        db.execute("DROP FUNCTION study_embed.test_mistake(bigint)")


def test_client_can_ask_for_a_reembed(bank):
    qid = make_ready(bank)
    bank.update(qid, embedding_status="stale")
    assert bank.status(qid) == "stale"
    assert [c.id for c in bank.claim()] == [qid]


@pytest.mark.parametrize("status", ["pending", "failed", "stale", "bogus"])
def test_insert_cannot_start_elsewhere(bank, status):
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="cannot start as"):
        bank.insert(embedding_status=status)


def test_insert_ready_requires_a_verified_embedding(bank):
    text = render("q", "a", "b", "c", "d")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="needs its embedding"):
        bank.insert("q", ("a", "b", "c", "d"), embedding_status="ready", embedding_model="m")
    import hashlib

    wrong = hashlib.sha256(b"another text").digest()
    with pytest.raises(
        psycopg.errors.InsufficientPrivilege, match="embedding_source_sha256 of its"
    ):
        bank.insert(
            "q",
            ("a", "b", "c", "d"),
            embedding_status="ready",
            embedding_model="m",
            embedding=vector_for(text),
            embedding_source_sha256=wrong,
        )
    # a copied row with its embedding and the hash of its text stays ready: no re-embed
    qid = bank.insert(
        "q",
        ("a", "b", "c", "d"),
        embedding_status="ready",
        embedding_model="m",
        embedding=vector_for(text),
        embedding_source_sha256=hashlib.sha256(text.encode()).digest(),
    )
    assert bank.status(qid) == "ready"
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="must say embedding_status"):
        bank.insert(embedding=vector_for(text))


def test_soft_deleted_rows_are_never_claimed(bank):
    qid = bank.insert()
    bank.update(
        qid, deleted_at=psycopg.types.datetime.datetime.now(psycopg.types.datetime.timezone.utc)
    )
    assert bank.claim() == []


def test_restore_after_edit_while_deleted_is_queued(bank, db):
    qid = make_ready(bank)
    db.execute("UPDATE study_questions SET deleted_at = now() WHERE id = %s", (qid,))
    bank.update(qid, question_text="edited while deleted")
    assert bank.claim() == []
    db.execute("UPDATE study_questions SET deleted_at = NULL WHERE id = %s", (qid,))
    assert bank.status(qid) == "stale"
    [c] = bank.claim()
    assert "edited while deleted" in c.body


def test_restore_of_ready_row_stays_ready(bank, db):
    qid = make_ready(bank)
    db.execute("UPDATE study_questions SET deleted_at = now() WHERE id = %s", (qid,))
    db.execute("UPDATE study_questions SET deleted_at = NULL WHERE id = %s", (qid,))
    assert bank.status(qid) == "ready"
    assert bank.claim() == []


def test_delete_while_pending_then_restore_is_claimable_after_lease(bank, db):
    qid = bank.insert()
    [c] = bank.claim(lease="1 microsecond")
    db.execute("UPDATE study_questions SET deleted_at = now() WHERE id = %s", (qid,))
    assert bank.claim() == []
    db.execute("UPDATE study_questions SET deleted_at = NULL WHERE id = %s", (qid,))
    assert [x.id for x in bank.claim()] == [qid]


def test_fail_keeps_previous_embedding_and_backs_off(bank, db):
    qid = make_ready(bank)
    old = bank.row(qid)["embedding"]
    bank.update(qid, question_text="new")
    [c] = bank.claim()
    assert bank.fail([c], error="server said no") == {qid}
    r = bank.row(qid)
    assert r["embedding_status"] == "failed" and r["embedding"] == old
    assert r["embedding_attempts"] == 1 and r["embedding_last_error"] == "server said no"
    delay = db.execute(
        "SELECT embedding_due_at - now() FROM study_questions WHERE id = %s", (qid,)
    ).fetchone()[0]
    assert 25 <= delay.total_seconds() <= 30  # retry_base 30 s, after the first failure
    assert bank.claim() == []  # not due yet


def test_backoff_doubles_to_the_cap_and_stops_after_max_attempts(bank, db):
    db.execute(
        "UPDATE study_embed.settings SET retry_base = '1 millisecond',"
        " retry_max = '4 milliseconds', max_attempts = 5"
    )
    qid = bank.insert()
    delays = []
    for attempt in range(1, 6):
        with db.transaction():  # one now(): the delay is exact
            [c] = bank.claim()
            bank.fail([c])
            assert bank.row(qid)["embedding_attempts"] == attempt
            delays.append(
                db.execute(
                    "SELECT round(extract(epoch FROM embedding_due_at - now()) * 1000)::int"
                    " FROM study_questions WHERE id = %s",
                    (qid,),
                ).fetchone()[0]
            )
        db.execute("SELECT pg_sleep(0.01)")
    assert delays == [1, 2, 4, 4, None]
    assert bank.claim() == []
    failures = db.execute("SELECT id, waiting_for_edit FROM study_embed.failures").fetchall()
    assert failures == [(qid, True)]
    # an edit gives it a fresh budget
    bank.update(qid, choice_1="fixed")
    assert bank.row(qid)["embedding_attempts"] == 0
    assert [c.id for c in bank.claim()] == [qid]


def test_permanent_failure_waits_for_edit_or_explicit_retry(bank, db):
    qid = bank.insert()
    bank.fail(bank.claim(), error="422 input too long", retryable=False)
    r = bank.row(qid)
    assert r["embedding_status"] == "failed" and r["embedding_due_at"] is None
    assert bank.claim() == []
    assert db.execute("SELECT study_embed.retry_failed()").fetchone()[0] == 1
    assert [c.id for c in bank.claim()] == [qid]


def test_release_does_not_count_an_attempt(bank):
    qid = bank.insert()
    [c] = bank.claim()
    assert bank.release([c]) == {qid}
    r = bank.row(qid)
    assert r["embedding_status"] == "none" and r["embedding_attempts"] == 0
    for _ in range(3):  # released as often as needed
        [c] = bank.claim()
        assert bank.release([c]) == {qid}
    assert bank.row(qid)["embedding_attempts"] == 0


def test_release_returns_failed_and_stale_rows_to_their_status(bank, db):
    db.execute("UPDATE study_embed.settings SET retry_base = '1 millisecond'")
    failed = bank.insert()
    bank.fail(bank.claim())
    stale = make_ready(bank)
    bank.update(stale, question_text="changed")
    db.execute("SELECT pg_sleep(0.01)")
    claimed = bank.claim()
    assert {c.id for c in claimed} == {failed, stale}
    assert bank.release(claimed, retry_in="1 hour") == {failed, stale}
    assert (bank.status(failed), bank.status(stale)) == ("failed", "stale")
    assert bank.row(failed)["embedding_attempts"] == 1
    assert bank.claim() == []  # retry_in respected


def test_expired_lease_counts_as_an_attempt_and_is_bounded(bank, db):
    db.execute("UPDATE study_embed.settings SET max_attempts = 3")
    qid = bank.insert()
    bank.claim(lease="1 microsecond")
    bank.claim(lease="1 microsecond")  # expiry 1
    assert bank.row(qid)["embedding_attempts"] == 1
    bank.claim(lease="1 microsecond")  # expiry 2
    assert bank.claim(lease="1 microsecond") == []  # expiry 3: attempts used up
    r = bank.row(qid)
    assert r["embedding_status"] == "failed" and r["embedding_due_at"] is None
    assert "lease expired" in r["embedding_last_error"]


def test_two_connections_never_claim_the_same_row(bank, connect):
    ids = {bank.insert() for _ in range(40)}
    a, b = connect(autocommit=False), connect(autocommit=False)
    ca = a.execute("SELECT id FROM study_embed.claim(25)").fetchall()  # a's transaction open
    cb = b.execute("SELECT id FROM study_embed.claim(25)").fetchall()  # skips a's locked rows
    a.commit()
    b.commit()
    got_a, got_b = {r[0] for r in ca}, {r[0] for r in cb}
    assert len(got_a) == 25 and len(got_b) == 15
    assert got_a.isdisjoint(got_b) and got_a | got_b == ids


def test_claim_rejects_bad_arguments(db):
    for args in [(0, "1 minute"), (None, "1 minute"), (10, "0 seconds"), (10001, "1 minute")]:
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            db.execute("SELECT * FROM study_embed.claim(%s, %s::interval)", args)


def test_complete_rejects_mismatched_arrays_and_wrong_dimension(bank, db):
    qid = bank.insert()
    [c] = bank.claim()
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="differ in length"):
        db.execute(
            "SELECT * FROM study_embed.complete(%s, %s, %s, 'test-model')",
            ([qid], [c.token, c.token], [vector_for("x")]),
        )
    with pytest.raises(psycopg.errors.DataException, match="expected 1024 dimensions"):
        db.execute(
            "SELECT * FROM study_embed.complete(%s, %s, %s, 'test-model')",
            ([qid], [c.token], [np.ones(3, dtype=np.float32)]),
        )
    assert bank.status(qid) == "pending"


def test_requeue_model_queues_rows_of_another_model(bank, db):
    a, b = legacy_ready(bank, "old-model"), legacy_ready(bank, "old-model")
    make_ready(bank)
    n = db.execute("SELECT requeued FROM study_embed.requeue_model('test-model')").fetchone()[0]
    assert n == 2
    ra = bank.row(a)
    assert ra["embedding_status"] == "stale" and ra["embedding"] is not None
    claimed = bank.claim()
    assert {c.id for c in claimed} == {a, b}
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="serves model test-model"):
        bank.complete(claimed, model="old-model")
    assert bank.complete(claimed) == {a, b}
    assert (
        db.execute("SELECT requeued FROM study_embed.requeue_model('test-model')").fetchone()[0]
        == 0
    )


def test_status_view_counts_exactly(bank, db):
    ids = [bank.insert() for _ in range(6)]
    make_ready(bank, ids[0])
    bank.fail([c for c in bank.claim(1)])
    bank.claim(1)
    bank.update(ids[0], question_text="edit")
    db.execute("UPDATE study_questions SET deleted_at = now() WHERE id = %s", (ids[5],))
    db.execute("DELETE FROM study_questions WHERE id = %s", (ids[4],))
    want = dict(
        db.execute(
            "SELECT embedding_status, count(*) FROM study_questions WHERE deleted_at IS NULL"
            " GROUP BY 1"
        ).fetchall()
    )
    got = {s: live for s, live in db.execute("SELECT status, live FROM study_embed.status")}
    assert got == {s: want.get(s, 0) for s in ("none", "stale", "pending", "failed", "ready")}
    deleted = dict(db.execute("SELECT status, deleted FROM study_embed.status"))
    assert deleted["none"] == 1
    # folding the deltas changes nothing
    db.execute("SELECT study_embed.tick()")
    assert {s: live for s, live in db.execute("SELECT status, live FROM study_embed.status")} == got
    oldest = db.execute(
        "SELECT oldest_waiting FROM study_embed.status WHERE status = 'none'"
    ).fetchone()[0]
    assert oldest is not None
    db.execute("TRUNCATE study_question_attempts, study_questions CASCADE")
    assert sum(r[0] for r in db.execute("SELECT live FROM study_embed.status")) == 0


def test_notify_once_per_statement_and_only_when_claimable(bank, connect):
    listener = connect()
    listener.execute("LISTEN study_embed")
    assert listener.execute("SELECT study_embed.listener_sleep()").fetchone()[0] == "asleep"
    uid, tid = bank.user_id, bank.topic_id
    bank.conn.execute(
        "INSERT INTO study_questions (user_id, study_topic_id, question_text, choice_1, choice_2,"
        " choice_3, choice_4, correct_choice) SELECT %s, %s, 'q' || g, 'a', 'b', 'c', 'd', 1"
        " FROM generate_series(1, 50) g",
        (uid, tid),
    )
    got = list(listener.notifies(timeout=0.5))
    assert [n.channel for n in got] == ["study_embed"]
    # a non-content edit of rows that are ready wakes nobody
    claimed = bank.claim(100)
    bank.complete(claimed)
    list(listener.notifies(timeout=0.2))
    bank.conn.execute("UPDATE study_questions SET explanation = 'x'")
    assert list(listener.notifies(timeout=0.3)) == []
    # a content edit of many rows: one NOTIFY
    bank.conn.execute("UPDATE study_questions SET choice_1 = 'z'")
    assert len(list(listener.notifies(timeout=0.5))) == 1


def test_writers_do_not_notify_while_no_listener_sleeps(bank, connect):
    """NOTIFY serialises the commits of the writers that send it: nobody sleeps, nobody pays."""
    watcher = connect()
    watcher.execute("LISTEN study_embed")
    for _ in range(3):
        bank.insert()
    qid = bank.insert()
    bank.update(qid, question_text="edited")
    assert list(watcher.notifies(timeout=0.3)) == []
    # a listener goes to sleep: it finds work first (nothing is lost) and does not sleep
    assert watcher.execute("SELECT study_embed.listener_sleep()").fetchone()[0] == "work"
    bank.complete(bank.claim(100))
    assert watcher.execute("SELECT study_embed.listener_sleep()").fetchone()[0] == "asleep"
    bank.insert()
    assert [n.payload for n in watcher.notifies(timeout=1)] == ["insert"]
    # awake again (it drains): writers stop notifying
    watcher.execute("SELECT study_embed.listener_wake()")
    bank.insert()
    assert list(watcher.notifies(timeout=0.3)) == []


def test_a_writer_that_skipped_its_notify_is_never_lost(bank, connect):
    """The race the handshake closes: a writer inserts while the listener is awake (no NOTIFY),
    commits only after the listener decided to sleep.  The listener's sleep waits for it."""
    listener = connect()
    listener.execute("LISTEN study_embed")
    writer = connect(autocommit=False)
    writer.execute(
        "INSERT INTO study_questions (user_id, study_topic_id, question_text, choice_1, choice_2,"
        " choice_3, choice_4, correct_choice) VALUES (%s, %s, 'late', 'a', 'b', 'c', 'd', 1)",
        (bank.user_id, bank.topic_id),
    )
    # the writer holds the shared lock: the listener cannot sleep yet ...
    assert listener.execute("SELECT study_embed.listener_sleep(200)").fetchone()[0] == "busy"
    # ... and once the writer commits, the listener's look before sleeping finds its row
    writer.commit()
    assert listener.execute("SELECT study_embed.listener_sleep(200)").fetchone()[0] == "work"


def test_a_second_listener_sleeps_on_the_first_ones_lock(bank, connect):
    first, second = connect(), connect()
    for c in (first, second):
        c.execute("LISTEN study_embed")
    assert first.execute("SELECT study_embed.listener_sleep()").fetchone()[0] == "asleep"
    assert second.execute("SELECT study_embed.listener_sleep()").fetchone()[0] == "other"
    bank.insert()
    assert len(list(first.notifies(timeout=1))) == 1
    assert len(list(second.notifies(timeout=1))) == 1  # every listener is woken


def test_rows_given_back_now_wake_a_sleeping_listener(bank, connect):
    """A listener that stops gives its batch back (retry_in 0): another one, asleep, is woken."""
    sleeper = connect()
    sleeper.execute("LISTEN study_embed")
    bank.insert()
    claimed = bank.claim(10)
    assert sleeper.execute("SELECT study_embed.listener_sleep()").fetchone()[0] == "asleep"
    bank.release(claimed, retry_in="1 hour")
    assert list(sleeper.notifies(timeout=0.3)) == []
    assert bank.claim(10) == []  # not due for an hour
    bank.conn.execute("UPDATE study_questions SET question_text = 'x'")  # due again now
    got = list(sleeper.notifies(timeout=1))
    assert [n.payload for n in got] == ["update"]
    sleeper.execute("SELECT study_embed.listener_wake()")
    claimed = bank.claim(10)
    assert sleeper.execute("SELECT study_embed.listener_sleep()").fetchone()[0] == "asleep"
    bank.release(claimed)
    assert [n.payload for n in sleeper.notifies(timeout=1)] == ["release"]


def test_a_claim_skips_past_rows_whose_attempts_ran_out(bank, db):
    """The first rows due are expired leases with no attempt left: they are parked, and the
    claim still hands out the work behind them (a drain stopped here before)."""
    db.execute("UPDATE study_embed.settings SET max_attempts = 1")
    stuck = [bank.insert() for _ in range(5)]
    assert len(bank.claim(5, lease="1 microsecond")) == 5  # leases expire at once
    fresh = [bank.insert() for _ in range(3)]
    assert sorted(c.id for c in bank.claim(5)) == sorted(fresh)
    assert {bank.status(i) for i in stuck} == {"failed"}


def test_backoff_never_overflows_and_attempts_are_bounded(bank, db):
    db.execute("UPDATE study_embed.settings SET max_attempts = 100")
    qid = bank.insert()
    [c] = bank.claim(1)
    with db.transaction():  # 60 failed attempts behind it (triggers bypassed)
        db.execute("SET LOCAL session_replication_role = replica")
        db.execute("UPDATE study_questions SET embedding_attempts = 60 WHERE id = %s", (qid,))
    assert bank.fail([c]) == {qid}
    delay = db.execute(
        "SELECT embedding_due_at - now() FROM study_questions WHERE id = %s", (qid,)
    ).fetchone()[0]
    assert timedelta(minutes=59) < delay <= timedelta(hours=1)  # retry_max, from an earlier now()
    with pytest.raises(psycopg.errors.CheckViolation):
        db.execute("UPDATE study_embed.settings SET max_attempts = 101")
