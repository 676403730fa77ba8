"""What the pipeline costs a writer, in index entries.

An UPDATE is HOT when it adds no index entry at all; a row version that is not HOT and still has
its vector is inserted into the HNSW graph again (about 2 ms of CPU at 1024 dimensions, and a
dead entry for VACUUM).  Each event below runs in one transaction, and PostgreSQL's own
per-transaction counters (pg_stat_get_xact_tuples_updated / _hot_updated) say how many of its
row updates were HOT.  The rows have vectors (ready, or waiting with their old vector), so every
update that is not HOT is one HNSW insert.
"""

from __future__ import annotations

import pytest

from ..helpers import QuestionBank, vector_for

# A statement's new row versions must fit on their page beside the old ones (pruning happens
# when a page is read, and never to versions of a transaction still open): a few rows, as an
# app's statements touch, leave room.  What the app's single-row writes get under load is
# measured by `make bench` (writers).
N = 4


COUNTERS = (
    "SELECT pg_stat_get_xact_tuples_updated('study_questions'::regclass),"
    " pg_stat_get_xact_tuples_hot_updated('study_questions'::regclass)"
)


class Counted:
    """Row updates and HOT updates since it was made.  The xact_ counters also hold what earlier
    transactions of the session have not flushed yet; they are flushed only between
    transactions, so a difference taken inside one transaction is exact."""

    def __init__(self, db) -> None:
        self.db = db
        self.start = db.execute(COUNTERS).fetchone()

    def __call__(self) -> tuple[int, int]:
        now = self.db.execute(COUNTERS).fetchone()
        return now[0] - self.start[0], now[1] - self.start[1]


def _updates(bank: QuestionBank, statement: str, params=None) -> tuple[int, int]:
    """(row updates, of which HOT) made by statement, in a transaction of its own."""
    db = bank.conn
    with db.transaction():
        counted = Counted(db)
        db.execute(statement, params)
        return counted()


@pytest.fixture
def ready(bank) -> list[int]:
    """N ready rows with vectors, on a page with room."""
    ids = [bank.insert() for _ in range(N)]
    bank.complete(bank.claim(N))
    bank.conn.execute("VACUUM study_questions")
    return ids


def _requeued(bank: QuestionBank, ids: list[int]) -> None:
    """Make the ready rows wait again, each keeping its old vector."""
    bank.conn.execute("SELECT * FROM study_embed.requeue_model('another-model')")
    assert {bank.status(i) for i in ids} == {"stale"}
    bank.conn.execute("VACUUM study_questions")


def test_unrelated_updates_of_ready_rows_are_hot(bank, ready):
    for stmt in (
        "UPDATE study_questions SET correct_choice = 2",
        "UPDATE study_questions SET explanation = 'why', subject = 's', scope = 'c'",
        "UPDATE study_questions SET is_active = false, exam_name = 'e'",
        "UPDATE study_questions SET updated_at = now()",
    ):
        assert _updates(bank, stmt) == (N, N), stmt


def test_queue_transitions_are_hot(bank, ready):
    _requeued(bank, ready)
    db = bank.conn
    # claim: none of the queue's own moves adds an index entry
    with db.transaction():
        counted = Counted(db)
        claimed = bank.claim(N)
        assert (len(claimed), *counted()) == (N, N, N)
    half = N // 2
    a, b = claimed[:half], claimed[half:]
    assert _updates(
        bank, "SELECT * FROM study_embed.release(%s, %s)", ([c.id for c in a], [c.token for c in a])
    ) == (half, half)
    assert _updates(
        bank,
        "SELECT * FROM study_embed.fail(%s, %s, %s, true)",
        ([c.id for c in b], [c.token for c in b], ["e"] * len(b)),
    ) == (half, half)
    assert _updates(bank, "SELECT study_embed.retry_failed()") == (half, half)
    # an edit of a row that is already waiting keeps its place in the queue: HOT too
    assert _updates(bank, "UPDATE study_questions SET question_text = question_text || '!'") == (
        N,
        N,
    )
    assert _updates(bank, "UPDATE study_questions SET embedding_status = 'stale'") == (N, N)


def test_what_is_not_hot_is_one_graph_insert_per_new_vector(bank, ready):
    db = bank.conn
    # a text edit of a ready row: the row joins the queue index (its only non-HOT step) ...
    assert _updates(
        bank,
        "UPDATE study_questions SET question_text = question_text || '?' WHERE id = %s",
        (ready[0],),
    ) == (1, 0)
    # ... and its new vector is the second: re-embedding after an edit costs 2 graph inserts
    [c] = bank.claim(1)
    with db.transaction():
        counted = Counted(db)
        bank.complete([c])
        assert counted() == (1, 0)


def test_a_new_row_costs_one_graph_insert(bank):
    db = bank.conn
    qid = bank.insert()
    db.execute("VACUUM study_questions")
    with db.transaction():
        counted = Counted(db)
        [c] = bank.claim(1)
        assert counted() == (1, 1)  # the claim: no index entry
        bank.complete([c], vectors=[vector_for("x")])
        assert counted() == (2, 1)  # the vector: the one insert
    assert bank.status(qid) == "ready"


def test_claim_and_complete_run_no_sql_function_per_row(bank):
    """The helpers a claim and a complete evaluate for every row (render_question, text_sha256,
    _actor, transition_allowed, _inconsistency, _vectors_differ) are inlined into the statements
    that use them.  A SET clause, or a volatility declared below its body's, would make the
    planner call each one as a function that starts an executor of its own, row after row; and a
    SQL function that is not inlined is parsed and planned again at every call, so the helpers
    called once a batch are plpgsql (BENCHMARKS.md, "CPU per embedded row").  PostgreSQL counts
    only the calls it did not inline.  Per row, only the guard runs: once for the claim, once for
    the complete."""
    rows = 25
    for _ in range(rows):
        bank.insert()
    db = bank.conn
    with db.transaction():
        db.execute("SET LOCAL track_functions = 'all'")
        for batch in (13, 12):  # two batches: a helper called per batch is called twice
            claimed = bank.claim(batch)
            assert len(bank.complete(claimed)) == batch
        calls = db.execute(
            "SELECT p.proname, l.lanname, pg_stat_get_xact_function_calls(p.oid)"
            " FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang"
            " WHERE p.pronamespace = 'study_embed'::regnamespace"
            "   AND pg_stat_get_xact_function_calls(p.oid) IS NOT NULL"
        ).fetchall()
    assert {name: n for name, _, n in calls if n >= rows} == {"_guard_update": 2 * rows}
    # (pipeline_role() is folded to a constant when the guard's expression is planned: once)
    assert [(name, n) for name, lang, n in calls if lang == "sql" and n > 1] == []


def test_a_permanent_failure_leaves_the_queue_and_an_edit_brings_it_back(bank, db):
    qid = bank.insert()
    bank.fail(bank.claim(1), retryable=False)
    r = bank.row(qid)
    assert (r["embedding_status"], r["embedding_queued_at"], r["embedding_due_at"]) == (
        "failed",
        None,
        None,
    )
    assert bank.claim(10) == []
    assert db.execute("SELECT id, waiting_for_edit FROM study_embed.failures").fetchall() == [
        (qid, True)
    ]
    bank.update(qid, question_text="fixed")
    r = bank.row(qid)
    assert r["embedding_status"] == "stale" and r["embedding_queued_at"] is not None
    assert [c.id for c in bank.claim(10)] == [qid]


def test_requeue_and_retry_work_in_bounded_batches(bank, db):
    ids = [bank.insert() for _ in range(25)]
    bank.complete(bank.claim(100))
    after, calls, total = 0, 0, 0
    while after is not None:
        n, after = db.execute(
            "SELECT * FROM study_embed.requeue_model('m2', %s, 10)", (after,)
        ).fetchone()
        total, calls = total + n, calls + 1
    assert (total, calls) == (25, 4)  # 10 + 10 + 5, then the empty tail
    claimed = bank.claim(100)
    bank.fail(claimed, retryable=False)
    assert db.execute("SELECT study_embed.retry_failed(NULL, 10)").fetchone()[0] == 10
    assert db.execute("SELECT study_embed.retry_failed(NULL, 10)").fetchone()[0] == 10
    assert db.execute("SELECT study_embed.retry_failed(NULL, 10)").fetchone()[0] == 5
    assert db.execute("SELECT study_embed.retry_failed(NULL, 10)").fetchone()[0] == 0
    assert {bank.status(i) for i in ids} == {"stale"}
