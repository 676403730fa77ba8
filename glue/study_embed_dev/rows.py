"""The one loader of app rows: users, topics, questions and attempts written as the app writes
them (plain INSERTs by any SQL client, so the pipeline's triggers run), for the tests, the demo,
`make eval` and the benchmarks.  Column names are identifiers, values are parameters: no SQL is
built from data.

For bulk loads that bypass the triggers (rows that are already `ready`, as a restore would
bring them), `vector_index_built_after()` drops the HNSW index for the load and builds it once
afterwards, as pg_restore does, instead of one graph insert per row.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

# realistic Korean and English text of a question bank, generated in SQL for `n` rows of one
# user and topic; %(...)s are psycopg parameters (the benchmarks' loads)
GENERATED_QUESTIONS = """
INSERT INTO study_questions (user_id, study_topic_id, question_text, choice_1, choice_2,
                             choice_3, choice_4, correct_choice)
SELECT %(uid)s, %(tid)s,
       '다음 중 ' || g || '번째 문제의 설명으로 옳은 것은? Which statement about item ' || g
           || ' is correct according to the lecture notes?',
       '보기 하나 ' || g, 'option two ' || g, '세 번째 보기 ' || g, 'the fourth option ' || g,
       1 + g %% 4
FROM generate_series(1, %(n)s) g
"""
# the same text shapes spread over the users and topics of add_users()
GENERATED_QUESTIONS_MANY_USERS = GENERATED_QUESTIONS.replace(
    "SELECT %(uid)s, %(tid)s,", "SELECT 1 + g %% 1000, (1 + g %% 1000) * 5 - g %% 5,"
)


def one_value(
    conn: psycopg.Connection, query: sql.Composable | str, params: Sequence[Any] | None = None
) -> Any:
    """The first column of the one row `query` returns (without `params`, a `%` in the query is
    a `%`, as in a LIKE pattern)."""
    row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return row[0]


def add_user(conn: psycopg.Connection, email: str) -> int:
    return one_value(conn, "INSERT INTO users (email) VALUES (%s) RETURNING id", (email,))


def add_topic(conn: psycopg.Connection, user_id: int, name: str) -> int:
    return one_value(
        conn,
        "INSERT INTO study_topics (user_id, name) VALUES (%s, %s) RETURNING id",
        (user_id, name),
    )


def add_question(
    conn: psycopg.Connection,
    user_id: int,
    topic_id: int,
    question_text: str,
    choices: Sequence[str],
    correct: int = 1,
    **columns: Any,
) -> int:
    """One question; `columns` are any other columns of study_questions (subject, scope,
    explanation, ... or, to test the trust boundary, the pipeline's own)."""
    c1, c2, c3, c4 = choices
    values = {
        "user_id": user_id,
        "study_topic_id": topic_id,
        "question_text": question_text,
        "choice_1": c1,
        "choice_2": c2,
        "choice_3": c3,
        "choice_4": c4,
        "correct_choice": correct,
        **columns,
    }
    query = sql.SQL("INSERT INTO study_questions ({}) VALUES ({}) RETURNING id").format(
        sql.SQL(", ").join(map(sql.Identifier, values)),
        sql.SQL(", ").join(sql.Placeholder() * len(values)),
    )
    return one_value(conn, query, list(values.values()))


def add_attempts(
    conn: psycopg.Connection,
    attempts: Iterable[tuple[int, int, int, int, int, datetime | None]],
) -> int:
    """Answers: (user, question, topic, selected choice, correct choice, answered_at or None
    for now); returns how many."""
    rows = [
        (uid, qid, tid, selected, correct, selected == correct, at)
        for uid, qid, tid, selected, correct, at in attempts
    ]
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO study_question_attempts (user_id, study_question_id, study_topic_id,"
            " selected_choice, correct_choice, is_correct, answered_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, coalesce(%s, now()))",
            rows,
        )
    return len(rows)


def add_users(conn: psycopg.Connection, users: int = 1000, topics_per_user: int = 5) -> None:
    """Users 1..users, each with topics_per_user topics (ids user * topics_per_user - k), for
    GENERATED_QUESTIONS_MANY_USERS; already present ones are kept."""
    conn.execute(
        "INSERT INTO users (id, email) SELECT g, 'user' || g || '@example.com'"
        " FROM generate_series(1, %s) g ON CONFLICT DO NOTHING",
        (users,),
    )
    conn.execute(
        "INSERT INTO study_topics (id, user_id, name)"
        " SELECT t, (t + %s - 1) / %s, '주제 ' || t FROM generate_series(1, %s) t"
        " ON CONFLICT DO NOTHING",
        (topics_per_user, topics_per_user, users * topics_per_user),
    )


@contextmanager
def vector_index_built_after(conn: psycopg.Connection) -> Iterator[None]:
    """Inside: no HNSW index on study_questions; on the way out each is created again with
    the definition the migrations gave it (in the caller's transaction)."""
    indexes = conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes"
        " WHERE schemaname = 'public' AND tablename = 'study_questions'"
        "   AND indexdef LIKE '%% USING hnsw %%'"
    ).fetchall()
    for name, _ in indexes:
        conn.execute(sql.SQL("DROP INDEX public.{}").format(sql.Identifier(name)))
    yield
    for _, definition in indexes:
        conn.execute(definition)
