"""The bank's reads for an app: free-text search, similar questions, explanation context,
near-duplicate pairs, a draft's near-duplicates before it is saved, wrong-answer clusters.

    from study_embed.api import AsyncStudyBank, Draft

    async with AsyncStudyBank.from_env() as bank:          # DATABASE_URL, EMBEDDING_*
        hits = await bank.search(user_id, "광합성 소기관")
        dupes = await bank.check_draft(user_id, Draft("…?", ("a", "b", "c", "d"), correct=2))

`AsyncStudyBank` runs on psycopg's async pool, for async apps (FastAPI, Starlette, aiohttp:
docs/examples/fastapi_app.py).  `StudyBank` is the same for synchronous code (Flask, Django, a
script): its calls run on a private event loop in a thread of their own, and any thread may
call it.  Both return the same typed results (study_embed.bank: Hit, ContextRow, Pair,
ClusterMember) and raise the same errors:

- `DatabaseUnavailable` (the database cannot be reached: at once, without waiting for it, as a
  request handler wants), `NotMigrated`, `NotPermitted`, `DatabaseError` (study_embed.database);
- `ModelMismatch` when no configured embedder has the model the database serves (a free-text
  query or a draft is embedded by the served model only, never compared across models);
- `EmbeddingError` when the embedding server cannot embed a query or a draft;
- `ValueError` for a bad argument (a draft without a question, an answer that is not 1-4).

Every read takes the user explicitly, and the SQL underneath returns nothing of another user's
questions.  Connect as the app's role (study_embed_app and SELECT on the app's tables), never as
an owner.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any, TypeVar

from .bank import Bank, ClusterMember, ContextRow, Draft, Hit, ModelMismatch, Pair
from .database import Database, DatabaseError, DatabaseUnavailable, NotMigrated, NotPermitted
from .embedders import ClientConfig, EmbeddingClient, EmbeddingError, make_client
from .settings import Settings

__all__ = [
    "AsyncStudyBank",
    "ClusterMember",
    "ContextRow",
    "DatabaseError",
    "DatabaseUnavailable",
    "Draft",
    "EmbeddingError",
    "Hit",
    "ModelMismatch",
    "NotMigrated",
    "NotPermitted",
    "Pair",
    "StudyBank",
]

T = TypeVar("T")


class AsyncStudyBank:
    """One database's question banks, for an async app.  Open it once (`async with`, or
    open()/close() in the app's lifespan) and share it: the pool serves concurrent requests."""

    def __init__(
        self,
        database_url: str,
        embedding: ClientConfig | Sequence[ClientConfig],
        *,
        pool_size: int = 4,
        app_name: str = "study-embed api",
    ) -> None:
        configs = [embedding] if isinstance(embedding, ClientConfig) else list(embedding)
        if not configs:
            raise ValueError("an embedder is needed: the one of the model the database serves")
        if not database_url:
            raise ValueError("a database URL is needed (DATABASE_URL)")
        self._configs = configs
        self._db: Database = Bank.database(database_url, max_size=pool_size, app_name=app_name)
        self._bank = Bank(self._db, retry=False)
        self._embedders: list[EmbeddingClient] = []

    @classmethod
    def from_env(
        cls, environ: dict[str, str] | None = None, *, pool_size: int = 4
    ) -> AsyncStudyBank:
        """From the settings every study-embed command reads (DATABASE_READ_URL, else
        DATABASE_URL; EMBEDDING_*, and NEXT_EMBEDDING_* during a model change); a bad one
        raises ConfigError.  Every read may be served by a streaming standby."""
        settings = Settings.resolve(None, "search", environ)
        configs = [ClientConfig.of(settings)]
        if (nxt := ClientConfig.next_of(settings)) is not None:
            configs.append(nxt)
        return cls(settings.read_url, configs, pool_size=pool_size)

    async def open(self) -> None:
        await self._db.open()
        self._embedders = [make_client(c) for c in self._configs]

    async def close(self) -> None:
        for client in self._embedders:
            await client.aclose()
        self._embedders = []
        await self._db.close()

    async def __aenter__(self) -> AsyncStudyBank:
        await self.open()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def _clients(self) -> list[EmbeddingClient]:
        if not self._embedders:
            raise RuntimeError("the bank is not open: use `async with` or await open() first")
        return self._embedders

    async def served_model(self) -> str:
        """The model whose vectors every search compares (study_embed.generations)."""
        return await self._bank.served_model()

    async def search(
        self, user_id: int, text: str, k: int = 10, topic_id: int | None = None
    ) -> list[Hit]:
        """The user's questions that best match free text (dense and lexical, fused)."""
        _check_k(k)
        return await self._bank.search(user_id, self._clients, text, k, topic_id)

    async def similar(
        self, user_id: int, question_id: int, k: int = 10, same_topic: bool = False
    ) -> list[Hit]:
        """The user's questions most similar to one of theirs (empty for another's)."""
        _check_k(k)
        return await self._bank.similar(user_id, question_id, k, same_topic)

    async def explanation_context(
        self, user_id: int, question_id: int, k: int = 5
    ) -> list[ContextRow]:
        """What an explanation generator should read for a question: the user's related,
        explained questions, none below the model's relevance floor (often none)."""
        _check_k(k)
        return await self._bank.explanation_context(user_id, question_id, k)

    async def duplicates(self, user_id: int, limit: int = 200) -> list[Pair]:
        """The user's open near-duplicate pairs, most similar first."""
        return await self._bank.duplicates(user_id, limit)

    async def check_draft(
        self, user_id: int, draft: Draft, threshold: float | None = None
    ) -> list[Hit]:
        """The near-duplicates a question would have in the user's bank, before it is saved."""
        return await self._bank.check_draft(user_id, self._clients, draft, threshold)

    async def clusters(
        self,
        user_id: int,
        recent: int = 50,
        threshold: float | None = None,
        word_weight: float | None = None,
    ) -> list[ClusterMember]:
        """The user's recent wrong answers grouped by concept, each group named.  Questions are
        compared by their vectors and, at `word_weight` (0 to below 1), by the words they share;
        without a threshold or a weight, the served model's."""
        if not 1 <= recent <= 500:
            raise ValueError(f"recent must be between 1 and 500, not {recent}")
        if word_weight is not None and not 0 <= word_weight < 1:
            raise ValueError(f"word_weight must be at least 0 and below 1, not {word_weight}")
        return await self._bank.clusters(user_id, recent, threshold, word_weight)


def _check_k(k: int) -> None:
    if not 1 <= k <= 100:
        raise ValueError(f"k must be between 1 and 100, not {k}")


class StudyBank:
    """AsyncStudyBank for synchronous code: the same reads, results and errors.  It owns a
    thread running an event loop; close() (or `with`) stops it."""

    def __init__(self, bank: AsyncStudyBank) -> None:
        self._async = bank
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="study-embed api", daemon=True
        )
        self._thread.start()
        try:
            self._run(bank.open)
        except BaseException:
            self._stop()
            raise

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, *, pool_size: int = 4) -> StudyBank:
        return cls(AsyncStudyBank.from_env(environ, pool_size=pool_size))

    def _run(self, read: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        if not self._thread.is_alive():
            raise RuntimeError("the bank is closed")
        return asyncio.run_coroutine_threadsafe(read(*args), self._loop).result()

    def _stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def close(self) -> None:
        if self._thread.is_alive():
            try:
                self._run(self._async.close)
            finally:
                self._stop()

    def __enter__(self) -> StudyBank:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def served_model(self) -> str:
        return self._run(self._async.served_model)

    def search(
        self, user_id: int, text: str, k: int = 10, topic_id: int | None = None
    ) -> list[Hit]:
        return self._run(self._async.search, user_id, text, k, topic_id)

    def similar(
        self, user_id: int, question_id: int, k: int = 10, same_topic: bool = False
    ) -> list[Hit]:
        return self._run(self._async.similar, user_id, question_id, k, same_topic)

    def explanation_context(self, user_id: int, question_id: int, k: int = 5) -> list[ContextRow]:
        return self._run(self._async.explanation_context, user_id, question_id, k)

    def duplicates(self, user_id: int, limit: int = 200) -> list[Pair]:
        return self._run(self._async.duplicates, user_id, limit)

    def check_draft(self, user_id: int, draft: Draft, threshold: float | None = None) -> list[Hit]:
        return self._run(self._async.check_draft, user_id, draft, threshold)

    def clusters(
        self,
        user_id: int,
        recent: int = 50,
        threshold: float | None = None,
        word_weight: float | None = None,
    ) -> list[ClusterMember]:
        return self._run(self._async.clusters, user_id, recent, threshold, word_weight)
