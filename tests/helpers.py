"""Shared test helpers: question rows, deterministic vectors, direct calls of the queue API."""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np
import psycopg
from pgvector.psycopg import register_vector

from study_embed_dev.embed_server import EmbedServer
from study_embed_dev.rows import add_question, add_topic, add_user
from study_embed_dev.vectors import DIM, render, vector_for

# the model every test database serves (the template is migrated with it, tests/conftest.py)
TEST_MODEL = "test-model"

__all__ = [
    "DIM",
    "render",
    "vector_for",
    "Claimed",
    "QuestionBank",
    "nested_plans",
    "listener_env",
    "run_cli",
    "wait_until",
    "statuses",
    "listener_sleeps",
    "assert_ready_with_current_text",
    "KOREAN",
    "korean_bank",
    "question_links",
]

_counter = itertools.count()


@dataclass
class Claimed:
    id: int
    token: object
    body: str


class QuestionBank:
    """Writes questions as an app (any SQL client) would, and drives the queue API."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        register_vector(conn)
        self.user_id, self.topic_id = self.new_user()

    def new_user(self) -> tuple[int, int]:
        n = next(_counter)
        uid = add_user(self.conn, f"u{n}@example.com")
        return uid, add_topic(self.conn, uid, f"t{n}")

    def insert(
        self,
        question: str | None = None,
        choices=None,
        *,
        user: tuple[int, int] | None = None,
        correct: int = 1,
        **extra,
    ) -> int:
        n = next(_counter)
        question = question if question is not None else f"question {n}?"
        choices = choices or (f"a{n}", f"b{n}", f"c{n}", f"d{n}")
        uid, tid = user or (self.user_id, self.topic_id)
        return add_question(self.conn, uid, tid, question, choices, correct, **extra)

    def update(self, qid: int, **cols) -> None:
        q = psycopg.sql.SQL("UPDATE study_questions SET {} WHERE id = %s").format(
            psycopg.sql.SQL(", ").join(
                psycopg.sql.SQL("{} = %s").format(psycopg.sql.Identifier(c)) for c in cols
            )
        )
        self.conn.execute(q, [*cols.values(), qid])

    def row(self, qid: int) -> dict:
        cur = self.conn.cursor(row_factory=psycopg.rows.dict_row)
        return cur.execute("SELECT * FROM study_questions WHERE id = %s", (qid,)).fetchone()

    def status(self, qid: int) -> str:
        return self.row(qid)["embedding_status"]

    def text(self, qid: int) -> str:
        r = self.row(qid)
        return render(
            r["question_text"], r["choice_1"], r["choice_2"], r["choice_3"], r["choice_4"]
        )

    # -- the queue API, as a listener calls it ---------------------------------------------------

    def claim(self, n: int = 10, lease: str = "2 minutes", conn=None) -> list[Claimed]:
        rows = (
            (conn or self.conn)
            .execute(
                "SELECT id, claim_token, body FROM study_embed.claim(%s, %s::interval)", (n, lease)
            )
            .fetchall()
        )
        return [Claimed(*r) for r in rows]

    def complete(
        self, claimed: list[Claimed], model: str = TEST_MODEL, vectors=None, conn=None
    ) -> set[int]:
        vectors = vectors or [vector_for(c.body) for c in claimed]
        rows = (
            (conn or self.conn)
            .execute(
                "SELECT * FROM study_embed.complete(%s, %s, %s, %s)",
                ([c.id for c in claimed], [c.token for c in claimed], vectors, model),
            )
            .fetchall()
        )
        return {r[0] for r in rows}

    def fail(self, claimed: list[Claimed], error: str = "boom", retryable: bool = True) -> set[int]:
        rows = self.conn.execute(
            "SELECT * FROM study_embed.fail(%s, %s, %s, %s)",
            (
                [c.id for c in claimed],
                [c.token for c in claimed],
                [error] * len(claimed),
                retryable,
            ),
        ).fetchall()
        return {r[0] for r in rows}

    def release(self, claimed: list[Claimed], retry_in: str = "0 seconds") -> set[int]:
        rows = self.conn.execute(
            "SELECT * FROM study_embed.release(%s, %s, %s::interval)",
            ([c.id for c in claimed], [c.token for c in claimed], retry_in),
        ).fetchall()
        return {r[0] for r in rows}


def nested_plans(
    url: str,
    statement: str,
    params=None,
    expect_rows: int | None = None,
    setup: tuple[str, ...] = (),
) -> list[str]:
    """EXPLAIN ANALYZE of every statement `statement` runs, functions' inner ones included
    (auto_explain, reported to this client as NOTICEs), in a transaction that is rolled back
    (after the `setup` statements)."""
    notices: list[str] = []
    with psycopg.connect(url, autocommit=True) as c:
        register_vector(c)
        c.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        for setting in (
            "LOAD 'auto_explain'",
            "SET auto_explain.log_min_duration = 0",
            "SET auto_explain.log_nested_statements = on",
            "SET auto_explain.log_analyze = on",
            "SET auto_explain.log_buffers = on",
            "SET auto_explain.log_level = notice",
        ):
            c.execute(setting)
        with c.transaction(force_rollback=True):
            for stmt in setup:
                c.execute(stmt)
            notices.clear()
            rows = c.execute(statement, params).fetchall()
    if expect_rows is not None:
        assert len(rows) == expect_rows
    return notices


# -- running the command line against the test database ----------------------------------------


def listener_env(db_url: str, server: EmbedServer, **extra) -> dict:
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "EMBEDDING_URL": server.url,
        "EMBEDDING_API": "tei",
        "EMBEDDING_MODEL": TEST_MODEL,
        "LOG_LEVEL": "INFO",
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_cli(*args, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "study_embed.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_until(pred, timeout: float = 30, every: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def listener_sleeps(db) -> bool:
    """A listener holds the sleep lock: it scanned, found nothing, and waits for a NOTIFY
    (study_embed.listener_sleep)."""
    return db.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_locks l, study_embed.sleep_lock_key() k"
        " WHERE l.locktype = 'advisory' AND l.classid = k[1]::oid AND l.objid = k[2]::oid"
        "   AND l.mode = 'ExclusiveLock' AND l.granted AND l.database ="
        "   (SELECT oid FROM pg_database WHERE datname = current_database()))"
    ).fetchone()[0]


def statuses(db) -> dict[str, int]:
    return dict(
        db.execute("SELECT embedding_status, count(*) FROM study_questions GROUP BY 1").fetchall()
    )


def assert_ready_with_current_text(db, ids=None):
    rows = db.execute(
        "SELECT id, question_text, choice_1, choice_2, choice_3, choice_4, embedding,"
        " embedding_status FROM study_questions ORDER BY id"
    ).fetchall()
    for qid, q, c1, c2, c3, c4, emb, status in rows:
        if ids is not None and qid not in ids:
            continue
        assert status == "ready", (qid, status)
        assert np.array_equal(emb.to_numpy(), vector_for(render(q, c1, c2, c3, c4))), qid


# -- a small Korean bank of two users (the UI's tests) ------------------------------------------

KOREAN = {
    "photo": (
        "광합성이 일어나는 세포 소기관은?",
        ("미토콘드리아", "엽록체", "리보솜", "골지체"),
        2,
    ),
    "breath": ("세포 호흡이 주로 일어나는 곳은?", ("미토콘드리아", "엽록체", "핵", "액포"), 1),
    "king": ("훈민정음을 창제한 왕은 누구인가?", ("태조", "세종", "정조", "영조"), 2),
    # the same question typed again: a near-duplicate pair
    "king_again": ("훈민정음을 창제한 왕은 누구인가요?", ("태조", "세종", "정조", "영조"), 2),
    "b_secret": ("비밀B 엽록체에서 일어나는 반응은?", ("명반응", "해당과정", "발효", "전사"), 1),
}
MORE_BIOLOGY = [  # more of user a's 생명과학, so that a search has something to rank
    (
        "식물 세포에서 광합성을 담당하는 세포 소기관은 무엇인가?",
        ("엽록체", "핵", "액포", "세포벽"),
        1,
    ),
    ("단백질 합성이 일어나는 세포 소기관은?", ("리보솜", "리소좀", "중심체", "골지체"), 1),
    ("광합성의 명반응이 일어나는 장소는?", ("틸라코이드", "스트로마", "기질", "세포질"), 1),
    ("DNA를 구성하는 염기가 아닌 것은?", ("아데닌", "구아닌", "우라실", "사이토신"), 3),
    ("혈당량을 낮추는 호르몬은?", ("인슐린", "글루카곤", "아드레날린", "티록신"), 1),
]


def korean_bank(bank: QuestionBank) -> dict[str, int]:
    """User a: photosynthesis and respiration (topic 생명과학), a question typed twice (topic
    한국사); user b: the same photosynthesis question and one of its own.  Ids by name, and the
    users as "a" and "b"; nothing embedded yet."""
    a = bank.new_user()[0]
    life = add_topic(bank.conn, a, "생명과학")
    history = add_topic(bank.conn, a, "한국사")
    b, b_topic = bank.new_user()
    ids = {"a": a, "b": b}
    for name, topic in [
        ("photo", life),
        ("breath", life),
        ("king", history),
        ("king_again", history),
    ]:
        text, choices, correct = KOREAN[name]
        extra = {"explanation": "엽록체의 틸라코이드"} if name == "photo" else {}
        ids[name] = bank.insert(text, choices, user=(a, topic), correct=correct, **extra)
    for text, choices, correct in MORE_BIOLOGY:
        bank.insert(text, choices, user=(a, life), correct=correct)
    for name, key in [("b_photo", "photo"), ("b_secret", "b_secret")]:
        text, choices, correct = KOREAN[key]
        ids[name] = bank.insert(text, choices, user=(b, b_topic), correct=correct)
    return ids


def question_links(html: str) -> list[int]:
    """The question ids a UI page links to, in page order."""
    return [int(m) for m in re.findall(r'href="/questions/(\d+)\?user=', html)]


def legacy_ready(bank, model: str) -> int:
    """A ready row embedded by another model than the served one (a bank from before
    generations, where a listener could store any model's name), copied in by the owner."""
    q, choices = f"legacy {model} {np.random.rand()}", ("a", "b", "c", "d")
    text = render(q, *choices)
    return bank.insert(
        q,
        choices,
        embedding_status="ready",
        embedding_model=model,
        embedding=vector_for(text),
        embedding_source_sha256=hashlib.sha256(text.encode()).digest(),
    )


# -- the state machine's invariant, read off a database ------------------------------------------


def queue_bookkeeping_broken(conn: psycopg.Connection) -> list[tuple]:
    """Rows whose queue bookkeeping disagrees with their status: (id, status); none expected."""
    return conn.execute(
        "SELECT id, embedding_status FROM study_questions WHERE"
        " (embedding_status = 'pending') <> (embedding_claim_token IS NOT NULL)"
        " OR (embedding_status IN ('none', 'stale', 'pending') AND embedding_due_at IS NULL)"
        " OR (embedding_status = 'ready' AND embedding_due_at IS NOT NULL)"
    ).fetchall()


def status_counts(conn: psycopg.Connection) -> tuple[dict[str, int], dict[str, int]]:
    """The counters' live rows per status (study_embed.status) and the rows' own count."""
    got = {s: n for s, n in conn.execute("SELECT status, live FROM study_embed.status") if n}
    want = dict(
        conn.execute(
            "SELECT embedding_status, count(*) FROM study_questions WHERE deleted_at IS NULL"
            " GROUP BY 1"
        ).fetchall()
    )
    return got, want


def ready_rows_not_of_their_text(conn: psycopg.Connection, vector) -> tuple[int, list[tuple]]:
    """How many rows are ready, and those whose vector (`vector(rendered text)`) or source hash
    is not their current text's: (why, id)."""
    register_vector(conn)
    ready, wrong = 0, []
    for qid, q, c1, c2, c3, c4, emb, sha in conn.execute(
        "SELECT id, question_text, choice_1, choice_2, choice_3, choice_4, embedding,"
        " embedding_source_sha256 FROM study_questions WHERE embedding_status = 'ready'"
    ):
        ready += 1
        text = render(q, c1, c2, c3, c4)
        if not np.allclose(emb.to_numpy(), vector(text), atol=1e-6):
            wrong.append(("foreign vector", qid))
        if bytes(sha) != hashlib.sha256(text.encode()).digest():
            wrong.append(("foreign text", qid))
    return ready, wrong
