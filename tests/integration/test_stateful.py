"""Hypothesis drives random sequences of everything that can happen to a question.

After every step: a row is `ready` only if its embedding was computed from its current rendered
text (checked against the vector itself, not a flag), and the status view's counts are exact.
"""

from __future__ import annotations

import hashlib
from functools import cache

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

from ..helpers import QuestionBank, render, vector_for

CONTENT = ["question_text", "choice_1", "choice_2", "choice_3", "choice_4"]
OTHER = ["correct_choice", "explanation", "subject", "scope"]
WORDS = st.sampled_from(["사과", "apple", "x", "y", "2+2", "정답"])  # small: edits often repeat


@cache
def _vector(text: str) -> np.ndarray:
    """What the test server returns for a text (the machine's texts repeat: computed once)."""
    return vector_for(text)


SETTINGS = settings(
    max_examples=200,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class QueueMachine(RuleBasedStateMachine):
    questions = Bundle("questions")

    def __init__(self, bank: QuestionBank) -> None:
        super().__init__()
        self.bank = bank
        self.db = bank.conn
        self.db.execute("TRUNCATE study_question_attempts, study_questions CASCADE")
        self.claims: list = []  # every claim handed out, current or voided
        # ready row versions already checked, as (id, xmin, ctid): a version never changes (an
        # UPDATE of any kind, HOT or not, triggers or none, writes a new one), so a version
        # checked once need not be read again
        self.checked: set[tuple[int, str, str]] = set()

    @rule(target=questions, q=WORDS, c=st.tuples(WORDS, WORDS, WORDS, WORDS))
    def insert(self, q, c):
        return self.bank.insert(q, c)

    @rule(qid=questions, column=st.sampled_from(CONTENT), value=WORDS)
    def edit_content(self, qid, column, value):
        self.bank.update(qid, **{column: value})

    @rule(qid=questions, column=st.sampled_from(OTHER), n=st.integers(1, 4))
    def edit_other(self, qid, column, n):
        self.bank.update(qid, **{column: n if column == "correct_choice" else f"v{n}"})

    @rule(n=st.integers(1, 5), short_lease=st.booleans())
    def claim(self, n, short_lease):
        self.claims += self.bank.claim(n, lease="1 microsecond" if short_lease else "1 hour")

    # Which claim a rule acts on is drawn as a plain number: how many claims there are depends
    # on the database's clock (backoffs of a millisecond, leases of a microsecond), and Hypothesis
    # needs the same draws to mean the same choices when it replays an example.
    def _pick(self, k: int):
        return self.claims[k % len(self.claims)]

    @rule(k=st.integers(0, 10**6))
    def complete(self, k):
        # the listener embeds the text its claim handed out; the claim may since have been
        # voided by an edit, expired, or been taken over
        if self.claims:
            self.bank.complete([self._pick(k)])

    @rule(k=st.integers(0, 10**6), retryable=st.booleans())
    def fail(self, k, retryable):
        if self.claims:
            self.bank.fail([self._pick(k)], retryable=retryable)

    @rule(k=st.integers(0, 10**6))
    def release(self, k):
        if self.claims:
            self.bank.release([self._pick(k)])

    @rule(qid=questions)
    def soft_delete(self, qid):
        self.db.execute("UPDATE study_questions SET deleted_at = now() WHERE id = %s", (qid,))

    @rule(qid=questions)
    def restore(self, qid):
        self.db.execute("UPDATE study_questions SET deleted_at = NULL WHERE id = %s", (qid,))

    @rule(qid=questions)
    def ask_reembed(self, qid):
        self.bank.update(qid, embedding_status="stale")

    @rule()
    def retry_failed(self):
        self.db.execute("SELECT study_embed.retry_failed()")

    @rule()
    def requeue_model(self):
        self.db.execute("SELECT study_embed.requeue_model('other-model')")

    @invariant()
    def ready_means_embedded_from_current_text(self):
        versions = self.db.execute(
            "SELECT id, xmin::text, ctid::text FROM study_questions"
            " WHERE embedding_status = 'ready'"
        ).fetchall()
        unchecked = [v for v in versions if v not in self.checked]
        if not unchecked:
            return
        rows = self.db.execute(
            "SELECT id, xmin::text, ctid::text, question_text, choice_1, choice_2, choice_3,"
            " choice_4, embedding, embedding_source_sha256 FROM study_questions"
            " WHERE embedding_status = 'ready' AND id = ANY(%s)",
            ([qid for qid, _, _ in unchecked],),
        ).fetchall()
        assert len(rows) == len(unchecked)
        for qid, xmin, ctid, q, c1, c2, c3, c4, emb, sha in rows:
            text = render(q, c1, c2, c3, c4)
            assert emb is not None, qid
            assert np.array_equal(emb.to_numpy(), _vector(text)), (
                f"row {qid} ready with a foreign vector"
            )
            assert bytes(sha) == hashlib.sha256(text.encode()).digest()
            self.checked.add((qid, xmin, ctid))

    @invariant()
    def queue_bookkeeping_is_consistent(self):
        bad = self.db.execute(
            "SELECT id, embedding_status FROM study_questions WHERE"
            " (embedding_status = 'pending') <> (embedding_claim_token IS NOT NULL)"
            " OR (embedding_status IN ('none', 'stale', 'pending') AND embedding_due_at IS NULL)"
            " OR (embedding_status = 'ready' AND embedding_due_at IS NOT NULL)"
        ).fetchall()
        assert bad == []

    @invariant()
    def status_counts_are_exact(self):
        want = dict(
            self.db.execute(
                "SELECT embedding_status, count(*) FROM study_questions WHERE deleted_at IS NULL"
                " GROUP BY 1"
            ).fetchall()
        )
        got = {s: n for s, n in self.db.execute("SELECT status, live FROM study_embed.status") if n}
        assert got == want


def test_random_histories_keep_every_ready_row_correct(db, bank):
    db.execute(
        "UPDATE study_embed.settings SET retry_base = '1 millisecond',"
        " retry_max = '2 milliseconds', max_attempts = 3"
    )
    run_state_machine_as_test(lambda: QueueMachine(bank), settings=SETTINGS)


def test_the_invariant_check_can_fail(db, bank):
    """The invariant above would catch a wrong vector: plant one behind the guards' back."""
    machine = QueueMachine(bank)
    qid = bank.insert("q", ("a", "b", "c", "d"))
    [c] = bank.claim()
    bank.complete([c])
    machine.ready_means_embedded_from_current_text()
    with db.transaction():
        db.execute("SET LOCAL session_replication_role = replica")  # bypass the triggers
        db.execute("UPDATE study_questions SET question_text = 'changed' WHERE id = %s", (qid,))
    with pytest.raises(AssertionError):
        machine.ready_means_embedded_from_current_text()
