"""The app-facing reads: the tenant-safe functions that `study_embed_app` may call (search,
near-duplicates, similar questions, explanation context, wrong-answer clusters, dismissal), one
method per statement of db/queries/bank.sql, typed results.

Used by `study-embed search` / `check-duplicate` and by the UI.  Every method takes the user
explicitly, and the SQL underneath returns nothing of another user's questions.  The database
layer underneath (database.py) decides what a database error means and raises it typed; the UI
asks with `retry=False`, so that a page says "the database is down" instead of waiting for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from .database import Database
from .embedders import EmbeddingClient, embed_query
from .queue import GenerationStatus, StatusRow, read_generations, read_status


class ModelMismatch(Exception):
    """No embedder of this client has the model the database serves: a query embedded by
    another model would be compared with vectors it means nothing next to."""


def served_embedder(
    embedders: EmbeddingClient | Sequence[EmbeddingClient], served: str
) -> EmbeddingClient:
    """The embedder whose model the database serves (EMBEDDING_*, or NEXT_EMBEDDING_* once a
    model change is switched), else ModelMismatch."""
    found = [embedders] if isinstance(embedders, EmbeddingClient) else list(embedders)
    for client in found:
        if client.config.model == served:
            return client
    have = " and ".join(repr(c.config.model) for c in found)
    raise ModelMismatch(
        f"the database serves model {served!r}, but this client embeds queries with {have}: "
        f"set EMBEDDING_MODEL={served} and the EMBEDDING_URL of its server (during a model "
        "change, NEXT_EMBEDDING_MODEL and NEXT_EMBEDDING_URL may name the other model)"
    )


@dataclass(frozen=True)
class Hit:
    id: int
    similarity: float
    question_text: str


@dataclass(frozen=True)
class RoleCheck:
    """What the connected role is and may do (`bank_role`)."""

    name: str
    superuser: bool
    pipeline: bool  # a member of study_embed_pipeline, the functions' owner
    table_owner: bool  # a member of the role that owns study_questions
    app: bool  # has study_embed_app's rights
    reads: bool  # SELECT on the four app tables
    writes: bool  # INSERT, UPDATE, DELETE or TRUNCATE on study_questions

    def refusal(self) -> str | None:
        """Why a read-only reference UI must not run as this role, or None."""
        if self.superuser or self.table_owner or self.pipeline:
            what = (
                "a superuser"
                if self.superuser
                else "the owner of study_questions"
                if self.table_owner
                else "a member of study_embed_pipeline"
            )
            return (
                f"role {self.name} is {what}; the UI connects as a role with study_embed_app "
                "and SELECT on the app's tables, never as an owner"
            )
        if not self.app:
            return f"role {self.name} lacks study_embed_app: GRANT study_embed_app TO {self.name}"
        if not self.reads:
            return (
                f"role {self.name} cannot read the app's tables: GRANT SELECT ON users, "
                f"study_topics, study_questions, study_question_attempts TO {self.name}"
            )
        return None


@dataclass(frozen=True)
class User:
    id: int
    name: str | None  # the users table's name, else its e-mail, where it has either
    questions: int  # live questions
    ready: int  # of those, embedded


@dataclass(frozen=True)
class Question:
    id: int
    topic_id: int
    topic: str | None
    text: str
    choices: tuple[str, str, str, str]
    correct_choice: int
    explanation: str | None
    status: str
    model: str | None
    embedded_at: datetime | None


@dataclass(frozen=True)
class ContextRow:
    """One question of the context an explanation generator gets (explanation_context)."""

    id: int
    similarity: float
    rendered: str
    correct_choice: int
    correct_answer: str
    explanation: str | None
    ai_explanation: str | None


@dataclass(frozen=True)
class Draft:
    """A question being written, before it is saved: its text, its four choices and, when
    known, the number of its correct choice (near-duplicates share their correct answer)."""

    question: str
    choices: tuple[str, str, str, str]
    correct: int | None = None

    def __post_init__(self) -> None:
        if not self.question.strip():
            raise ValueError("a draft needs its question's text")
        if len(self.choices) != 4:
            raise ValueError(f"a draft has four choices, not {len(self.choices)}")
        if self.correct is not None and self.correct not in (1, 2, 3, 4):
            raise ValueError(f"the correct choice is 1, 2, 3 or 4, not {self.correct}")

    @property
    def answer(self) -> str | None:
        return None if self.correct is None else self.choices[self.correct - 1]


@dataclass(frozen=True)
class Pair:
    question_id: int
    duplicate_of: int
    similarity: float
    question_text: str
    duplicate_text: str


@dataclass(frozen=True)
class ClusterMember:
    cluster: int  # 1 = the biggest group
    representative_id: int  # the member closest to the group's mean
    question_id: int
    similarity: float  # to the representative
    question_text: str
    last_wrong_at: datetime
    cluster_name: str  # the group's common scope, else its subject and shared words


class Bank:
    """One user's question bank as study_embed_app sees it."""

    def __init__(self, db: Database, *, retry: bool = True) -> None:
        self.db = db
        self.retry = retry

    @staticmethod
    def database(url: str, *, max_size: int = 4, app_name: str = "study-embed") -> Database:
        """A database client that knows the bank's statements (open it before use)."""
        return Database(url, "bank", max_size=max_size, app_name=app_name)

    async def _rows(self, name: str, **params) -> list[tuple]:
        return await self.db.run(name, params, retry=self.retry)

    async def role(self) -> RoleCheck:
        [row] = await self._rows("bank_role")
        return RoleCheck(*row)

    async def status(self) -> list[StatusRow]:
        return await read_status(self.db, self.retry)

    async def generations(self) -> list[GenerationStatus]:
        return await read_generations(self.db, self.retry)

    async def served_model(self) -> str:
        [(model,)] = await self._rows("served_model")
        return model

    async def embed_query(
        self, embedders: EmbeddingClient | Sequence[EmbeddingClient], text: str
    ) -> np.ndarray:
        """`text` embedded by the model the database serves (ModelMismatch when none of
        `embedders` has it); raises EmbeddingError when its server cannot embed it."""
        client = served_embedder(embedders, await self.served_model())
        return await embed_query(client, text)

    async def users(self, limit: int = 200) -> list[User]:
        return [User(*r) for r in await self._rows("bank_users", user_id=None, limit=limit)]

    async def user(self, user_id: int) -> User | None:
        rows = await self._rows("bank_users", user_id=user_id, limit=1)
        return User(*rows[0]) if rows else None

    async def question(self, user_id: int, question_id: int) -> Question | None:
        rows = await self._rows("bank_question", user_id=user_id, question_id=question_id)
        if not rows:
            return None
        qid, topic_id, topic, text, c1, c2, c3, c4, correct, expl, status, model, at = rows[0]
        return Question(
            qid, topic_id, topic, text, (c1, c2, c3, c4), correct, expl, status, model, at
        )

    async def render(self, question: str, choices: Sequence[str]) -> str:
        """The text the pipeline embeds, from the pipeline's own renderer."""
        c1, c2, c3, c4 = choices
        [(text,)] = await self._rows(
            "render", question_text=question, choice_1=c1, choice_2=c2, choice_3=c3, choice_4=c4
        )
        return text

    async def search(
        self,
        user_id: int,
        embedders: EmbeddingClient | Sequence[EmbeddingClient],
        text: str,
        k: int = 10,
        topic_id: int | None = None,
        dense: bool = False,
    ) -> list[Hit]:
        """Free-text search: the text embedded by the served model (embed_query), then ranked
        (search_vector)."""
        vec = await self.embed_query(embedders, text)
        return await self.search_vector(user_id, vec, None if dense else text, k, topic_id)

    async def search_vector(
        self, user_id: int, query: np.ndarray, text: str | None, k: int, topic_id: int | None
    ) -> list[Hit]:
        """With the query's text, the dense ranking fused with the words' lexical ranking
        (search_questions_hybrid: make eval measured it better); without, dense alone."""
        if text is None:
            rows = await self._rows("search", user_id=user_id, query=query, k=k, topic_id=topic_id)
        else:
            rows = await self._rows(
                "search_hybrid", user_id=user_id, query=query, text=text, k=k, topic_id=topic_id
            )
        return [Hit(*r) for r in rows]

    async def find_duplicates(
        self, user_id: int, query: np.ndarray, threshold: float | None, answer: str | None = None
    ) -> list[Hit]:
        """Near-duplicates of a new question's vector; with `answer` (its correct choice's
        text), only questions whose correct choice reads the same."""
        rows = await self._rows(
            "find_duplicates", user_id=user_id, query=query, threshold=threshold, answer=answer
        )
        return [Hit(*r) for r in rows]

    async def check_draft(
        self,
        user_id: int,
        embedders: EmbeddingClient | Sequence[EmbeddingClient],
        draft: Draft,
        threshold: float | None = None,
    ) -> list[Hit]:
        """The near-duplicates a draft would have in the user's bank, as the near-duplicate pass
        would find them once it is saved: rendered by the pipeline's own renderer, embedded by
        the served model, the model's threshold (else the setting) and, with the correct choice
        known, the same-answer check.  Nothing is written."""
        text = await self.render(draft.question, draft.choices)
        vec = await self.embed_query(embedders, text)
        return await self.find_duplicates(user_id, vec, threshold, draft.answer)

    async def similar(
        self, user_id: int, question_id: int, k: int = 10, same_topic: bool = False
    ) -> list[Hit]:
        rows = await self._rows(
            "bank_similar", user_id=user_id, question_id=question_id, k=k, same_topic=same_topic
        )
        return [Hit(*r) for r in rows]

    async def explanation_context(
        self, user_id: int, question_id: int, k: int = 5
    ) -> list[ContextRow]:
        rows = await self._rows("bank_context", user_id=user_id, question_id=question_id, k=k)
        return [ContextRow(*r) for r in rows]

    async def duplicates(self, user_id: int, limit: int = 200) -> list[Pair]:
        return [Pair(*r) for r in await self._rows("bank_duplicates", user_id=user_id, limit=limit)]

    async def dismiss(self, user_id: int, question_id: int, duplicate_of: int) -> bool:
        """Close an open pair through study_embed.dismiss_duplicate; False when the user has
        no such pair."""
        [(done,)] = await self._rows(
            "bank_dismiss", user_id=user_id, question_id=question_id, duplicate_of=duplicate_of
        )
        return bool(done)

    async def clusters(
        self,
        user_id: int,
        recent: int = 50,
        threshold: float | None = None,
        word_weight: float | None = None,
    ) -> list[ClusterMember]:
        """Without a threshold or a word weight, the model's (wrong_answer_clusters)."""
        rows = await self._rows(
            "bank_clusters",
            user_id=user_id,
            recent=recent,
            threshold=threshold,
            word_weight=word_weight,
        )
        return [ClusterMember(*r) for r in rows]
