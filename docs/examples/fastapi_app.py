"""A FastAPI app on study-embed's async API (study_embed.api): search, similar questions,
explanation context, a draft's near-duplicates and wrong-answer clusters, as JSON.

    pip install 'study-embed' fastapi uvicorn
    DATABASE_URL=postgresql://app@db/app EMBEDDING_URL=http://tei:8080 \\
        uvicorn fastapi_app:app

The bank is opened once, in the app's lifespan, and shared by every request (its pool serves
them concurrently).  Connect as the app's role: study_embed_app and SELECT on the app's
tables.  The user comes from the app's own authentication; `current_user` below stands in for
it (a header) and must be replaced by yours: every read is scoped to the user it is given.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from study_embed.api import (
    AsyncStudyBank,
    ClusterMember,
    ContextRow,
    DatabaseUnavailable,
    Draft,
    EmbeddingError,
    Hit,
)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with AsyncStudyBank.from_env() as bank:  # DATABASE_URL, EMBEDDING_*
        app.state.bank = bank
        yield


app = FastAPI(title="questions", lifespan=lifespan)


def get_bank(request: Request) -> AsyncStudyBank:
    return request.app.state.bank


def current_user(x_user_id: Annotated[int, Header(gt=0)]) -> int:
    """Stands in for the app's authentication."""
    return x_user_id


Bank = Annotated[AsyncStudyBank, Depends(get_bank)]
User = Annotated[int, Depends(current_user)]


class DraftIn(BaseModel):
    question: str = Field(min_length=1, max_length=2000)
    choices: tuple[str, str, str, str]
    correct: int | None = Field(default=None, ge=1, le=4)


@app.get("/search")
async def search(
    q: Annotated[str, Query(min_length=1, max_length=500)], user: User, bank: Bank
) -> list[Hit]:
    return await bank.search(user, q)


@app.get("/questions/{question_id}/similar")
async def similar(question_id: int, user: User, bank: Bank) -> list[Hit]:
    return await bank.similar(user, question_id)


@app.get("/questions/{question_id}/context")
async def context(question_id: int, user: User, bank: Bank) -> list[ContextRow]:
    """What an explanation generator should read: often nothing, never an unrelated question."""
    return await bank.explanation_context(user, question_id)


@app.post("/drafts/duplicates")
async def draft_duplicates(draft: DraftIn, user: User, bank: Bank) -> list[Hit]:
    """Before a question is saved: the questions it would duplicate."""
    return await bank.check_draft(user, Draft(draft.question, draft.choices, draft.correct))


@app.get("/wrong-answers/clusters")
async def clusters(user: User, bank: Bank) -> list[ClusterMember]:
    return await bank.clusters(user)


@app.exception_handler(DatabaseUnavailable)
@app.exception_handler(EmbeddingError)
async def unavailable(request: Request, exc: Exception) -> JSONResponse:
    # the database or the embedding server is down: say so at once, the client may retry
    return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "5"})


@app.exception_handler(ValueError)
async def bad_request(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=422)
