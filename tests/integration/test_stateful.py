"""Hypothesis drives random sequences of everything that can happen to a question.

After every step: a row is `ready` only if its embedding was computed from its current rendered
text (checked against the vector itself, not a flag), and the status view's counts are exact.
With model changes (GenerationMachine): every search compares the served model's vectors only,
and a ready row's vector in each slot is that slot's model's.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache

import numpy as np
import psycopg
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from study_embed.migrate import MigrationError, Migrator
from study_embed_dev.vectors import DIM

from ..helpers import (
    TEST_MODEL,
    Claimed,
    QuestionBank,
    queue_bookkeeping_broken,
    render,
    status_counts,
    vector_for,
)

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
        assert queue_bookkeeping_broken(self.db) == []

    @invariant()
    def status_counts_are_exact(self):
        got, want = status_counts(self.db)
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


# -- model changes ---------------------------------------------------------------------------------

# the models a history may change between, with their dimensions (the served one of the test
# databases is TEST_MODEL, at 1024)
DIMS = {TEST_MODEL: DIM, "model-b": 8, "model-c": DIM}
GENERATION_SETTINGS = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@cache
def _model_vector(model: str, text: str) -> np.ndarray:
    """What `model`'s server returns for a text: another vector for every model."""
    if model == TEST_MODEL:
        return _vector(text)
    v = vector_for(f"{model}\n{text}")[: DIMS[model]]
    return (v / np.linalg.norm(v)).astype(np.float32)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@dataclass(frozen=True)
class Lane:
    """A claim, with the slot it came from and the model its listener embeds it with."""

    slot: str
    claim: Claimed
    model: str


class GenerationMachine(QueueMachine):
    """The queue machine with model changes: begin, switch, switch back and drop interleaved
    with edits, claims of both slots, completions by listeners that may not know of the latest
    switch, failures and crashes.  After every step: every search compares vectors of the
    served model only, and a `ready` row's served vector is the served model's for its current
    text (the shadow slot's likewise, for its model)."""

    def __init__(self, bank: QuestionBank, url: str) -> None:
        self.migrator = Migrator(url, cron=False, log=lambda _m: None)
        bank.conn.prepare_threshold = None  # the table's columns change under it
        super().__init__(bank)
        self.lanes: list[Lane] = []
        self.texts: dict[int, set[str]] = {}  # every rendered text each row has had
        self._reset_generations()

    def _generations(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT slot, model FROM study_embed.generations").fetchall())

    def _reset_generations(self) -> None:
        """Every example starts from TEST_MODEL served and no change (Hypothesis replays)."""
        g = self._generations()
        if g["served"] != TEST_MODEL and g.get("shadow") == TEST_MODEL:
            self.migrator.generation("switch", force=True)
            g = self._generations()
        if "shadow" in g:
            self.migrator.generation("drop")
        if g["served"] != TEST_MODEL:
            self.migrator.generation("begin", model=TEST_MODEL, dimension=DIM)
            self.migrator.generation("switch", force=True)
            self.migrator.generation("drop")

    @initialize(
        target=QueueMachine.questions, q=st.lists(WORDS, min_size=2, max_size=4, unique=True)
    )
    def some_questions(self, q):
        """A bank to change the model of (the rules add more)."""
        return multiple(*(self.bank.insert(text, ("a", "b", "c", "d")) for text in q))

    # -- the listener's side, per slot ------------------------------------------------------------

    @rule(n=st.integers(1, 5), short_lease=st.booleans())
    def claim(self, n, short_lease):
        served = self._generations()["served"]
        for c in self.bank.claim(n, lease="1 microsecond" if short_lease else "1 hour"):
            self.lanes.append(Lane("served", c, served))

    @rule(n=st.integers(1, 5), short_lease=st.booleans())
    def claim_shadow(self, n, short_lease):
        shadow = self._generations().get("shadow")
        if shadow is None:
            return
        rows = self.db.execute(
            "SELECT id, claim_token, body FROM study_embed.claim_shadow(%s, %s::interval)",
            (n, "1 microsecond" if short_lease else "1 hour"),
        ).fetchall()
        self.lanes += [Lane("shadow", Claimed(*r), shadow) for r in rows]

    def _pick_lane(self, k: int) -> Lane:
        return self.lanes[k % len(self.lanes)]

    def _call(self, lane: Lane, fn: str, extra: str, params: tuple) -> None:
        """A listener's call for its claim; refused (and only then) when the slot it claimed
        from no longer holds the model it embeds with."""
        name = fn if lane.slot == "served" else f"{fn}_shadow"
        holds = self._generations().get(lane.slot)
        try:
            self.db.execute(
                f"SELECT * FROM study_embed.{name}(%s, %s{extra})",
                ([lane.claim.id], [lane.claim.token], *params),
            ).fetchall()
        except (psycopg.errors.InvalidParameterValue, psycopg.errors.ObjectNotInPrerequisiteState):
            event(f"{name} refused: the slot holds another model")
            assert holds != lane.model, f"{name} refused {lane.model}, which {lane.slot} holds"
        else:
            event(f"{name} taken")

    @rule(k=st.integers(0, 10**6))
    def complete(self, k):
        if self.lanes:
            lane = self._pick_lane(k)
            vector = _model_vector(lane.model, lane.claim.body)
            self._call(lane, "complete", ", %s, %s", ([vector], lane.model))

    @rule(k=st.integers(0, 10**6), retryable=st.booleans())
    def fail(self, k, retryable):
        if self.lanes:
            lane = self._pick_lane(k)
            if lane.slot == "served" or "shadow" in self._generations():
                self._call(lane, "fail", ", %s, %s", (["boom"], retryable))

    @rule(k=st.integers(0, 10**6))
    def release(self, k):
        if self.lanes:
            lane = self._pick_lane(k)
            if lane.slot == "served" or "shadow" in self._generations():
                self._call(lane, "release", "", ())

    @rule(slot=st.sampled_from(["served", "shadow"]))
    def drain(self, slot):
        """A listener that keeps up: everything claimable in a slot, claimed and completed."""
        before = len(self.lanes)
        if slot == "served":
            self.claim(n=50, short_lease=False)
        else:
            self.claim_shadow(n=50, short_lease=False)
        for k in range(before, len(self.lanes)):
            self.complete(k)

    @rule()
    def crash(self):
        """A listener dies with its claims: they wait out their lease."""
        self.lanes.clear()

    @rule()
    def requeue_model(self):
        self.db.execute("SELECT study_embed.requeue_model(study_embed.served_model())")

    # -- the owner's side ---------------------------------------------------------------------

    @rule(model=st.sampled_from(sorted(DIMS)))
    def begin(self, model):
        g = self._generations()
        if "shadow" in g or model == g["served"]:
            with pytest.raises(MigrationError):
                self.migrator.generation("begin", model=model, dimension=DIMS[model])
            return
        self.migrator.generation("begin", model=model, dimension=DIMS[model])
        assert self._generations() == {"served": g["served"], "shadow": model}

    @rule(force=st.booleans())
    def switch(self, force):
        g = self._generations()
        missing = self.db.execute(
            "SELECT count(*) FROM study_questions WHERE deleted_at IS NULL"
            " AND embedding_shadow_status <> 'ready'"
            if "shadow" in g
            else "SELECT 1"
        ).fetchone()[0]
        if "shadow" not in g or (missing and not force):
            with pytest.raises(MigrationError):
                self.migrator.generation("switch", force=force)
            assert self._generations() == g
            return
        self.migrator.generation("switch", force=force)
        rows = self.db.execute("SELECT count(*) FROM study_questions").fetchone()[0]
        event(f"switched with {'no' if not rows else 'some'} rows")
        event(
            "switched"
            + (" back" if g["shadow"] == TEST_MODEL else "")
            + (" by force" if missing else "")
        )
        assert self._generations() == {"served": g["shadow"], "shadow": g["served"]}

    @rule()
    def catch_up_then_switch(self):
        """What an operator does: wait for the listener to embed every live row for the other
        generation, then switch (no force needed)."""
        if "shadow" in self._generations():
            # the listener finishes what it holds of the other generation (its claims of the
            # served one stay in flight across the switch) ...
            for k, lane in enumerate(list(self.lanes)):
                if lane.slot == "shadow":
                    self.complete(k)
            for _ in range(3):  # ... and what a microsecond's lease gave back
                self.drain("shadow")
            self.switch(force=False)

    @rule()
    def drop(self):
        g = self._generations()
        if "shadow" not in g:
            with pytest.raises(MigrationError):
                self.migrator.generation("drop")
            return
        self.migrator.generation("drop")
        assert self._generations() == {"served": g["served"]}

    # -- after every step ---------------------------------------------------------------------

    @invariant()
    def ready_means_embedded_from_current_text(self):
        g = self._generations()
        for slot, model in g.items():
            col = "embedding" if slot == "served" else "embedding_shadow"
            rows = self.db.execute(
                psycopg.sql.SQL(
                    "SELECT id, question_text, choice_1, choice_2, choice_3, choice_4, {v}, {m}"
                    " FROM study_questions WHERE {s} = 'ready'"
                ).format(
                    v=psycopg.sql.Identifier(col),
                    m=psycopg.sql.Identifier(f"{col}_model"),
                    s=psycopg.sql.Identifier(f"{col}_status"),
                )
            ).fetchall()
            for qid, q, c1, c2, c3, c4, emb, emb_model in rows:
                assert emb_model == model, f"row {qid}: {slot} holds {model}, not {emb_model}"
                assert np.array_equal(
                    emb.to_numpy(), _model_vector(model, render(q, c1, c2, c3, c4))
                ), f"row {qid} ready in {slot} with a foreign vector"

    def _served_vector_of(self, qid: int, served: str) -> np.ndarray:
        """The row's served vector, checked to be the served model's for one of the texts the
        row has had (a stale or failed row keeps its vector of an earlier text)."""
        emb, model = self.db.execute(
            "SELECT embedding, embedding_model FROM study_questions WHERE id = %s", (qid,)
        ).fetchone()
        assert model == served, f"row {qid} searched with {model}'s vector, {served} is served"
        vec = emb.to_numpy()
        assert any(np.array_equal(vec, _model_vector(served, t)) for t in self.texts[qid]), (
            f"row {qid}'s vector is not {served}'s for any text it has had"
        )
        return vec

    @invariant()
    def every_search_compares_the_served_model_with_itself(self):
        served = self._generations()["served"]
        for qid, q, c1, c2, c3, c4 in self.db.execute(
            "SELECT id, question_text, choice_1, choice_2, choice_3, choice_4 FROM study_questions"
        ):
            self.texts.setdefault(qid, set()).add(render(q, c1, c2, c3, c4))
        sources = self.db.execute(
            "SELECT id FROM study_questions WHERE embedding_status = 'ready'"
            " AND deleted_at IS NULL ORDER BY id LIMIT 3"
        ).fetchall()
        uid = self.bank.user_id
        for (qid,) in sources:
            mine = self._served_vector_of(qid, served)
            for other, similarity in self.db.execute(
                "SELECT id, similarity FROM study_embed.similar_questions(%s, %s, 50)", (uid, qid)
            ).fetchall():
                theirs = self._served_vector_of(other, served)
                assert similarity == pytest.approx(_cosine(mine, theirs), abs=1e-5)
        query = _model_vector(served, "a free-text query")
        for other, similarity in self.db.execute(
            "SELECT id, similarity FROM study_embed.search_questions(%s, %s, 50)", (uid, query)
        ).fetchall():
            theirs = self._served_vector_of(other, served)
            assert similarity == pytest.approx(_cosine(query, theirs), abs=1e-5)

    @invariant()
    def the_shadow_queue_is_consistent(self):
        if "shadow" not in self._generations():
            return
        bad = self.db.execute(
            "SELECT id FROM study_questions WHERE"
            " (embedding_shadow_status = 'pending') <> (embedding_shadow_claim_token IS NOT NULL)"
            " OR (embedding_shadow_status IN ('none', 'stale', 'pending')"
            "     AND embedding_shadow_due_at IS NULL)"
        ).fetchall()
        assert bad == []


def test_random_model_changes_keep_every_search_on_one_model(db, bank, db_url):
    db.execute(
        "UPDATE study_embed.settings SET retry_base = '1 millisecond',"
        " retry_max = '2 milliseconds', max_attempts = 3"
    )
    run_state_machine_as_test(lambda: GenerationMachine(bank, db_url), settings=GENERATION_SETTINGS)


def test_the_model_invariant_can_fail(db, bank, db_url):
    """A ready row whose vector is another model's is caught: plant one behind the guards'
    back (the row says the served model, the vector is model-c's)."""
    machine = GenerationMachine(bank, db_url)
    qid = bank.insert("q", ("a", "b", "c", "d"))
    [c] = bank.claim()
    bank.complete([c])
    machine.ready_means_embedded_from_current_text()
    with db.transaction():
        db.execute("SET LOCAL session_replication_role = replica")
        db.execute(
            "UPDATE study_questions SET embedding = %s WHERE id = %s",
            (_model_vector("model-c", bank.text(qid)), qid),
        )
    with pytest.raises(AssertionError):
        machine.ready_means_embedded_from_current_text()
