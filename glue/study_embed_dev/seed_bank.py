"""The seed's app as it stood before study-embed: its tables as its migrations 193-194 left them
(../shared/seed: the ORM of study_questions and study_question_attempts, the embedding columns,
the partial HNSW index), and rows as the seed's own worker left them.  For the adoption tests,
the Alembic end-to-end test and `make bench`'s adoption figures.

The seed's worker embedded "문제: …\\n보기:\\n1. …" (its commit message), rendered here with
`vectors.render`, written independently of study_embed.render_question(); a row it left `ready`
carries the vector of exactly that text and the model name it was configured with.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import psycopg
from pgvector.psycopg import register_vector

from .vectors import render, vector_for

# migration 193: the question bank; 194: the embedding columns and the partial HNSW index
SCHEMA = """
CREATE EXTENSION IF NOT EXISTS vector;
CREATE TABLE users (id bigserial PRIMARY KEY, email varchar(320));
CREATE TABLE study_topics (id bigserial PRIMARY KEY, user_id bigint NOT NULL REFERENCES users,
                           name varchar(200) NOT NULL);
CREATE TABLE study_questions (
    id bigserial PRIMARY KEY,
    user_id bigint NOT NULL REFERENCES users ON DELETE CASCADE,
    study_topic_id bigint NOT NULL REFERENCES study_topics ON DELETE CASCADE,
    question_text text NOT NULL,
    choice_1 text NOT NULL, choice_2 text NOT NULL, choice_3 text NOT NULL, choice_4 text NOT NULL,
    correct_choice smallint NOT NULL, subject varchar(120), scope varchar(200),
    exam_name varchar(120), exam_round varchar(120), explanation text, source_note text,
    is_active boolean NOT NULL DEFAULT true, ai_explanation text,
    ai_explanation_status varchar(20) NOT NULL DEFAULT 'none',
    ai_explanation_generated_at timestamptz, ai_explanation_model varchar(120),
    embedding vector(1024), embedding_status varchar(20) NOT NULL DEFAULT 'none',
    embedding_updated_at timestamptz, embedding_model varchar(120),
    created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz);
CREATE TABLE study_question_attempts (
    id bigserial PRIMARY KEY,
    user_id bigint NOT NULL REFERENCES users ON DELETE CASCADE,
    study_question_id bigint NOT NULL REFERENCES study_questions ON DELETE RESTRICT,
    study_topic_id bigint NOT NULL REFERENCES study_topics ON DELETE CASCADE,
    selected_choice smallint NOT NULL, correct_choice smallint NOT NULL,
    is_correct boolean NOT NULL, answered_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX study_questions_embedding_hnsw ON study_questions
    USING hnsw (embedding vector_cosine_ops) WHERE deleted_at IS NULL AND embedding IS NOT NULL;
"""

SEED_MODEL = "BAAI/bge-m3"  # what the seed's worker stored in embedding_model


@dataclass(frozen=True)
class SeedRow:
    """A question as the seed's worker left it.  `vector`: 'current' (of its text, as the
    worker embedded it), 'other' (some other vector), or None."""

    text: str
    status: str = "ready"
    vector: str | None = "current"
    model: str | None = SEED_MODEL
    deleted: bool = False
    choices: tuple[str, str, str, str] = ("하나", "둘", "셋", "넷")

    def rendered(self) -> str:
        return render(self.text, *self.choices)

    def embedding(self) -> np.ndarray | None:
        if self.vector == "current":
            return vector_for(self.rendered())
        if self.vector == "other":
            return vector_for("another text: " + self.text)
        return None


def owner(conn: psycopg.Connection) -> tuple[int, int]:
    """A user and a topic for the seed's rows (created once)."""
    row = conn.execute("SELECT id, user_id FROM study_topics ORDER BY id LIMIT 1").fetchone()
    if row:
        return row[1], row[0]
    uid = conn.execute("INSERT INTO users (email) VALUES ('seed@example.com') RETURNING id")
    user_id = uid.fetchone()[0]  # type: ignore[index]
    tid = conn.execute(
        "INSERT INTO study_topics (user_id, name) VALUES (%s, '생명과학') RETURNING id", (user_id,)
    )
    return user_id, tid.fetchone()[0]  # type: ignore[index]


def add_seed_rows(conn: psycopg.Connection, rows: Iterable[SeedRow]) -> list[int]:
    """Write rows as the seed's app and worker did (before study-embed: no trigger runs)."""
    register_vector(conn)
    user_id, topic_id = owner(conn)
    ids = []
    for r in rows:
        vec = r.embedding()
        ids.append(
            conn.execute(
                "INSERT INTO study_questions (user_id, study_topic_id, question_text, choice_1,"
                " choice_2, choice_3, choice_4, correct_choice, embedding, embedding_status,"
                " embedding_model, embedding_updated_at, deleted_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, 1, %s, %s, %s,"
                "         CASE WHEN %s THEN now() END, CASE WHEN %s THEN now() END) RETURNING id",
                (
                    user_id,
                    topic_id,
                    r.text,
                    *r.choices,
                    vec,
                    r.status,
                    r.model,
                    vec is not None,
                    r.deleted,
                ),
            ).fetchone()[0]  # type: ignore[index]
        )
    return ids


# ready rows for a bank of n questions, generated in SQL (the adoption benchmark): the seed's
# text, its vector drawn at random (its value does not matter to an adoption), packed pages as
# a restore leaves them
GENERATED_READY = """
INSERT INTO study_questions (user_id, study_topic_id, question_text, choice_1, choice_2,
                             choice_3, choice_4, correct_choice, embedding, embedding_status,
                             embedding_model, embedding_updated_at)
SELECT %(uid)s, %(tid)s, '다음 중 ' || g || '번째 문제의 설명으로 옳은 것은?',
       '보기 하나 ' || g, 'option two ' || g, '세 번째 보기 ' || g, 'the fourth option ' || g, 1,
       (SELECT array_agg(random()::real) FROM generate_series(1, 1024) WHERE g > 0)::vector,
       'ready', %(model)s, now()
FROM generate_series(1, %(n)s) g
"""
