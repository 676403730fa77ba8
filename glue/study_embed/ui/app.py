"""The UI's pages.  Each handler parses its parameters, asks `Bank` (the tenant-safe reads, as
the connected role) and renders a template; nothing here builds SQL.

    /                         users, the size of their bank, the queue's state
    /search?user=ID&q=TEXT    free-text search in that user's questions (the URL is the contract)
    /questions/ID?user=ID     a question, its most similar questions, its explanation context
    /duplicates?user=ID       open near-duplicate pairs; POST /duplicates/dismiss closes one
    /clusters?user=ID         the user's wrong-answer clusters
    /draft?user=ID&question=TEXT&c1..c4=TEXT&correct=N
                              a question being written: its near-duplicates in the user's bank
                              (embedded, never inserted; re-checked while it is typed)

Bad input, an unknown user, a question that is not the user's, a database or an embedding server
that is down each get a page that says so, with a 4xx or 5xx status; nothing of a question is
shown to a user it does not belong to.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ..bank import Bank, Draft, Hit, ModelMismatch, served_embedder
from ..database import DatabaseUnavailable, clean_text
from ..embedders import ClientConfig, EmbeddingClient, EmbeddingError, make_client
from ..settings import Settings

log = logging.getLogger("study_embed.ui")
HERE = Path(__file__).parent
QUERY_LIMIT = 500  # characters of a search query
DRAFT_LIMITS = {"question": 2000, "choice": 500}  # characters of a draft's question, a choice
RESULTS = 10
LOOPBACK = ("127.0.0.1", "::1", "localhost")
HEADERS = {
    # scripts and requests only from this origin (the draft page's), no frames, forms only to
    # this origin, nothing sent to other sites
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; "
    "script-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Refused(Exception):
    """The connected role must not run the UI (an owner, or lacking a right it needs)."""


class PageError(Exception):
    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status, self.title, self.message = status, title, message


templates = Jinja2Templates(
    env=jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
)


def _page(request: Request, name: str, code: int = 200, **context: Any) -> Response:
    return templates.TemplateResponse(request, name, context, status_code=code, headers=HEADERS)


def _whole_number(name: str, raw: str | None) -> int:
    if raw is None or raw.strip() == "":
        raise PageError(400, "사용자를 고르세요", f"{name} is missing: add ?{name}=ID to the URL")
    try:
        value = int(raw)
    except ValueError:
        raise PageError(400, "잘못된 입력", f"{name} must be a whole number, not {raw!r}") from None
    if not 0 < value < 2**63:
        raise PageError(400, "잘못된 입력", f"{name} must be a positive id, not {value}")
    return value


async def _user(request: Request):
    bank: Bank = request.app.state.bank
    user_id = _whole_number("user", request.query_params.get("user"))
    user = await bank.user(user_id)
    if user is None:
        raise PageError(404, "없는 사용자", f"there is no user {user_id}")
    return user


# -- pages ---------------------------------------------------------------------------------------


async def _embedded(
    request: Request, page: str, what: str, read: Callable[[EmbeddingClient], Awaitable[list]]
) -> tuple[list, str | None]:
    """`read` with the embedder of the model the database serves: its rows, or what to say on
    the page (the server cannot embed `what`; no embedder has the served model)."""
    bank: Bank = request.app.state.bank
    client = None
    try:
        client = served_embedder(request.app.state.embedders, await bank.served_model())
        return await read(client), None
    except EmbeddingError as e:
        where = client.config.url if client is not None else "?"
        log.warning(f"{page}: embedding failed", extra={"fields": {"error": str(e)}})
        return [], f"the embedding server at {where} cannot embed the {what}: {e}"
    except ModelMismatch as e:
        log.error(f"{page}: no embedder for the served model", extra={"fields": {"error": str(e)}})
        return [], str(e)


async def index(request: Request) -> Response:
    bank: Bank = request.app.state.bank
    return _page(
        request,
        "index.html",
        users=await bank.users(),
        status=await bank.status(),
        generations=await bank.generations(),
    )


async def search(request: Request) -> Response:
    bank: Bank = request.app.state.bank
    user = await _user(request)
    q = clean_text(request.query_params.get("q", ""), QUERY_LIMIT).strip()
    hits: list[Hit] = []
    error: str | None = None
    if q and user.ready:
        hits, error = await _embedded(
            request, "search", "query", lambda client: bank.search(user.id, client, q, RESULTS)
        )
    return _page(
        request,
        "search.html",
        code=503 if error else 200,
        user=user,
        q=q,
        hits=hits,
        error=error,
    )


async def question(request: Request) -> Response:
    bank: Bank = request.app.state.bank
    user = await _user(request)
    qid = request.path_params["question_id"]
    same_topic = request.query_params.get("same_topic") == "1"
    found = await bank.question(user.id, qid)
    if found is None:
        # the same page whether the id does not exist or is another user's
        raise PageError(404, "없는 문제", f"user {user.id} has no question {qid}")
    return _page(
        request,
        "question.html",
        user=user,
        question=found,
        same_topic=same_topic,
        similar=await bank.similar(user.id, qid, RESULTS, same_topic),
        context=await bank.explanation_context(user.id, qid),
    )


async def duplicates(request: Request) -> Response:
    bank: Bank = request.app.state.bank
    user = await _user(request)
    return _page(
        request,
        "duplicates.html",
        user=user,
        pairs=await bank.duplicates(user.id),
        dismissed=request.query_params.get("dismissed"),
    )


async def dismiss(request: Request) -> Response:
    _same_origin(request)
    bank: Bank = request.app.state.writer  # the one write: on the primary
    form = await request.form()
    user_id = _whole_number("user", _field(form, "user"))
    a = _whole_number("question_id", _field(form, "question_id"))
    b = _whole_number("duplicate_of", _field(form, "duplicate_of"))
    if not await bank.dismiss(user_id, a, b):
        raise PageError(404, "없는 중복 후보", f"user {user_id} has no open pair {a} ~ {b}")
    log.info("pair dismissed", extra={"fields": {"user": user_id, "pair": [a, b]}})
    query = urlencode({"user": user_id, "dismissed": f"{a}-{b}"})
    return RedirectResponse(f"/duplicates?{query}", status_code=303, headers=HEADERS)


async def clusters(request: Request) -> Response:
    bank: Bank = request.app.state.bank
    user = await _user(request)
    groups: dict[int, list] = {}
    for m in await bank.clusters(user.id):
        groups.setdefault(m.cluster, []).append(m)
    return _page(request, "clusters.html", user=user, clusters=list(groups.values()))


async def draft(request: Request) -> Response:
    """A draft's near-duplicates (Bank.check_draft): the draft is embedded, never inserted."""
    bank: Bank = request.app.state.bank
    user = await _user(request)
    params = request.query_params
    question = clean_text(params.get("question", ""), DRAFT_LIMITS["question"]).strip()
    c1, c2, c3, c4 = (
        clean_text(params.get(f"c{i}", ""), DRAFT_LIMITS["choice"]).strip() for i in range(1, 5)
    )
    raw = params.get("correct", "")
    if raw not in ("", "1", "2", "3", "4"):
        raise PageError(400, "잘못된 입력", f"correct must be 1, 2, 3 or 4, not {raw!r}")
    correct = int(raw) if raw else None
    shown = {"question": question, "choices": (c1, c2, c3, c4), "correct": correct}
    hits: list[Hit] = []
    error: str | None = None
    state = "empty"
    if question:
        state = "checked"
        if user.ready:
            written = Draft(question, (c1, c2, c3, c4), correct)
            hits, error = await _embedded(
                request, "draft", "draft", lambda client: bank.check_draft(user.id, client, written)
            )
    return _page(
        request,
        "draft.html",
        code=503 if error else 200,
        user=user,
        draft=shown,
        limits=DRAFT_LIMITS,
        hits=hits,
        error=error,
        state=state,
    )


def _field(form, name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


def _same_origin(request: Request) -> None:
    """A form POST from another site (cross-site request forgery) is refused: the browser says
    where it comes from in Sec-Fetch-Site, or at least in Origin."""
    site = request.headers.get("sec-fetch-site")
    origin = request.headers.get("origin")
    if site is not None:
        ok = site in ("same-origin", "none")
    elif origin is not None:
        ok = urlsplit(origin).netloc == request.headers.get("host")
    else:
        ok = True  # not a browser: a script that could send the POST from anywhere anyway
    if not ok:
        raise PageError(403, "다른 사이트의 요청", "a form posted from another site is refused")


# -- errors --------------------------------------------------------------------------------------


async def _page_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PageError)
    return _page(request, "error.html", exc.status, title=exc.title, message=exc.message)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    title = "없는 페이지" if exc.status_code == 404 else "잘못된 요청"
    return _page(request, "error.html", exc.status_code, title=title, message=str(exc.detail))


async def _database_down(request: Request, exc: Exception) -> Response:
    log.warning("database unavailable", extra={"fields": {"error": str(exc)}})
    return _page(
        request,
        "error.html",
        503,
        title="데이터베이스에 연결할 수 없습니다",
        message=f"the database cannot be reached: {exc}",
    )


async def _unexpected(request: Request, exc: Exception) -> Response:
    # (the server logs the exception with its traceback after this page is sent)
    return _page(
        request,
        "error.html",
        500,
        title="오류",
        message=f"this page failed ({type(exc).__name__}); the UI's log has the details",
    )


# -- the application -----------------------------------------------------------------------------


async def check_role(bank: Bank) -> None:
    """Refuse to serve as an owner; warn about rights the UI does not need."""
    role = await bank.role()
    reason = role.refusal()
    if reason:
        raise Refused(reason)
    if role.writes:
        log.warning(
            "the UI's role may write study_questions; it needs SELECT only",
            extra={"fields": {"role": role.name}},
        )


def create_app(
    settings: Settings, embedder: EmbeddingClient | None = None, pool_size: int = 4
) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # the pages read where the readers read (DATABASE_READ_URL: a standby); dismissing a
        # pair, the one write, goes to the primary (DATABASE_URL)
        db = Bank.database(settings.read_url, max_size=pool_size, app_name="study-embed ui")
        await db.open()
        writer = db
        if settings.read_url != settings.database_url:
            writer = Bank.database(settings.database_url, max_size=1, app_name="study-embed ui")
            try:
                await writer.open()
            except BaseException:
                await db.close()
                raise
        nxt = ClientConfig.next_of(settings)
        clients = [embedder or make_client(ClientConfig.of(settings))]
        clients += [make_client(nxt)] if nxt is not None else []
        try:
            app.state.bank = Bank(db, retry=False)  # a page says "down", it does not wait
            app.state.writer = Bank(writer, retry=False)
            await check_role(app.state.bank)
            # a query is embedded by the one whose model the database serves
            app.state.embedders = clients
            app.state.settings = settings
            yield
        finally:
            for client in clients:
                await client.aclose()
            if writer is not db:
                await writer.close()
            await db.close()

    hosts = ["*"] if settings.ui_host not in LOOPBACK else [*LOOPBACK, "[::1]"]
    return Starlette(
        routes=[
            Route("/", index),
            Route("/search", search),
            Route("/questions/{question_id:int}", question),
            Route("/duplicates", duplicates),
            Route("/duplicates/dismiss", dismiss, methods=["POST"]),
            Route("/clusters", clusters),
            Route("/draft", draft),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
        # a page on loopback answers only to a loopback name (no DNS rebinding)
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)],
        exception_handlers={
            PageError: _page_error,
            HTTPException: _http_error,
            DatabaseUnavailable: _database_down,
            Exception: _unexpected,
        },
        lifespan=lifespan,
    )
