"""What every embedding protocol shares: the dispositions, the errors, the configuration, the
HTTP exchange and the strict checks of a reply.  A protocol (tei.py, openai.py, ollama.py) says
where to send, how to ask, where the vectors are in the reply and what its error statuses mean.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import logging
import math
import re
import time
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import orjson

from ..settings import Settings
from .pacing import Pacer, retry_after

log = logging.getLogger("study_embed.embedders")
HEALTH_TIMEOUT = 2.0
PROBE_FRESH = 5.0  # seconds a successful embedding request stands for the server's health
RATE_LIMIT_PATIENCE = 30.0  # seconds a batch waits out rate limits before it is given back
# the smallest real request, when the server must be asked whether it embeds (not the listener's
# start-up probe, which the test server may be told to spare)
HEALTH_PROBE_TEXT = "문제: ?"
# the size a server names when it refuses a request for holding too many texts: TEI's "batch
# size 64 > maximum allowed batch size 32" (its --max-client-batch-size), and gateways that
# copied it ("input batch size 100 > maximum allowed batch size 64")
_SIZE_LIMIT = re.compile(r"maximum allowed batch size\D{0,3}(\d+)", re.IGNORECASE)


class Disposition(enum.Enum):
    UNREACHABLE = "unreachable"
    BACK_OFF = "back off"
    SPLIT = "split"
    RETRY_LATER = "retry later"
    RATE_LIMITED = "rate limited"  # 429: not an outage; wait as long as the server says


class EmbeddingError(Exception):
    """A batch could not be embedded; `disposition` says what that means for its rows;
    `retry_after`, the seconds the server asked for (a 429)."""

    def __init__(
        self, message: str, disposition: Disposition, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.disposition = disposition
        self.retry_after = retry_after
        self.status: int | None = None  # the HTTP status, when the server answered with one

    @property
    def server_side(self) -> bool:
        """The server cannot serve now: nothing is wrong with the rows."""
        return self.disposition in (
            Disposition.UNREACHABLE,
            Disposition.BACK_OFF,
            Disposition.RATE_LIMITED,
        )


@dataclass(frozen=True)
class RowFailure:
    """This row's vector cannot be stored; `retryable`: it may work another time."""

    message: str
    retryable: bool = True


@dataclass(frozen=True)
class ClientConfig:
    api: str
    url: str
    model: str
    api_key: str | None
    timeout: float
    max_inputs: int | None  # None: the protocol's default (EmbeddingClient.default_max_inputs)
    rpm: int | None = None  # requests per minute the listener keeps under
    tpm: int | None = None  # tokens per minute (estimated: pacing.py)

    @classmethod
    def of(cls, settings: Settings) -> ClientConfig:
        return cls(
            api=settings.embedding_api,
            url=settings.embedding_url,
            model=settings.embedding_model,
            api_key=settings.embedding_api_key,
            timeout=settings.embedding_timeout,
            max_inputs=settings.embedding_max_inputs,
            rpm=settings.embedding_rpm,
            tpm=settings.embedding_tpm,
        )

    @classmethod
    def next_of(cls, settings: Settings) -> ClientConfig | None:
        """The other model's embedder during a model change (NEXT_EMBEDDING_*), or None.  It
        shares the timeout, request size and budgets of EMBEDDING_*."""
        if not settings.next_embedding_url or not settings.next_embedding_model:
            return None
        return dataclasses.replace(
            cls.of(settings),
            api=settings.next_embedding_api or settings.embedding_api,
            url=settings.next_embedding_url,
            model=settings.next_embedding_model,
            api_key=settings.next_embedding_api_key or settings.embedding_api_key,
        )


def _snippet(body: str, limit: int = 300) -> str:
    body = " ".join(body.split())
    return body if len(body) <= limit else body[:limit] + "…"


def error_message(resp: httpx.Response) -> str:
    """The server's own words: TEI {error, error_type}, OpenAI {error: {message}},
    Ollama {error}."""
    try:
        data = resp.json()
    except ValueError:
        return _snippet(resp.text) or resp.reason_phrase
    if isinstance(data, dict):
        err = data.get("error", data.get("message"))
        if isinstance(err, dict):
            err = err.get("message") or json.dumps(err)
        if err:
            kind = data.get("error_type") or data.get("type")
            return f"{err} ({kind})" if kind and isinstance(kind, str) else str(err)
    return _snippet(resp.text)


def _parse_json(resp: httpx.Response) -> Any:
    """orjson first: a reply of 100 bge-m3 vectors is ~2 MB of floats, and the stdlib parser
    spends more time on it than the whole database round trip.  orjson refuses NaN/Infinity
    tokens, which some servers emit; the stdlib parser reads them so that the per-vector check
    can name the bad row instead of failing the batch."""
    try:
        return orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(resp.content)
    except ValueError:
        ctype = resp.headers.get("content-type", "?")
        raise _unusable(
            f"reply is not JSON (content-type {ctype}): {_snippet(resp.text, 120)!r}"
        ) from None


class EmbeddingClient:
    """One protocol: where to send, how to ask, where the vectors are in the reply, what its
    error statuses mean."""

    path = ""
    health_path = ""
    # texts per request unless EMBEDDING_MAX_INPUTS says otherwise: every request costs the
    # listener about half a millisecond of CPU whatever it holds (BENCHMARKS.md)
    default_max_inputs = 32

    def __init__(self, config: ClientConfig, http: httpx.AsyncClient | None = None) -> None:
        self.config = config
        # the most texts a request holds; lowered to what the server takes when it refuses a
        # request for its size (_sized_request)
        self.max_inputs = config.max_inputs or self.default_max_inputs
        self.largest_answered = 0  # the most texts a request has been answered for
        self.pacer = Pacer(config.rpm, config.tpm)
        self.answered_at = float("-inf")  # the last time an embedding request succeeded
        self._probing = asyncio.Lock()
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self.http = http or httpx.AsyncClient(
            base_url=config.url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(config.timeout),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
        )

    def payload(self, texts: list[str]) -> dict[str, Any]:
        raise NotImplementedError

    def vectors(self, data: Any) -> Any:
        raise NotImplementedError

    def usage(self, data: Any) -> int | None:
        """The tokens the server counted for the request, where its reply says (OpenAI)."""
        return None

    def classify(self, resp: httpx.Response) -> EmbeddingError:
        """What an HTTP error status means for the rows in the request."""
        status = resp.status_code
        msg = f"HTTP {status} from {resp.request.url.path}: {error_message(resp)}"
        if status == 429:  # a rate limit, or TEI's full queue: wait as long as it says
            return EmbeddingError(msg, Disposition.RATE_LIMITED, retry_after(resp.headers))
        if status in (400, 413, 422):
            return EmbeddingError(msg, Disposition.SPLIT)
        if status in (401, 403):
            return EmbeddingError(msg + " — check EMBEDDING_API_KEY", Disposition.BACK_OFF)
        if status == 404:
            return EmbeddingError(
                msg + " — check EMBEDDING_URL, EMBEDDING_API and EMBEDDING_MODEL",
                Disposition.BACK_OFF,
            )
        return EmbeddingError(msg, Disposition.BACK_OFF)  # 408, 425, 5xx, anything else

    async def aclose(self) -> None:
        await self.http.aclose()

    async def healthy(self) -> bool:
        """Can the server embed now?  True at once when an embedding request succeeded in the
        last PROBE_FRESH seconds.  Otherwise its health route, where it has one (cheap, and
        TEI's answers 503 while its backend is down), then the smallest real request: a health
        route can answer 200 while every embedding fails (a half-broken server), and a proxy
        with no upstream answers HTML.  A rate limit is an answer: the server is up.  One probe
        at a time."""
        if time.monotonic() - self.answered_at < PROBE_FRESH or self.pacer.paused_for > 0:
            return True  # (paused: it answered with a rate limit, which is no outage)
        async with self._probing:
            if time.monotonic() - self.answered_at < PROBE_FRESH:
                return True
            if self.health_path:
                try:
                    resp = await self.http.get(self.health_path, timeout=HEALTH_TIMEOUT)
                except httpx.HTTPError:
                    return False
                if resp.status_code >= 500:
                    return False
            try:
                await self._embed_request([HEALTH_PROBE_TEXT], timeout=HEALTH_TIMEOUT)
            except EmbeddingError as e:
                return e.disposition is Disposition.RATE_LIMITED
            return True

    async def embed(
        self, texts: list[str], dim: int | None = None
    ) -> list[np.ndarray | RowFailure]:
        """Embed texts in requests of at most max_inputs; one result per text, in order.
        With `dim`, vectors of another dimension make the reply unusable."""
        out: list[np.ndarray | RowFailure] = []
        while len(out) < len(texts):
            part = texts[len(out) : len(out) + self.max_inputs]
            out += check_vectors(await self._sized_request(part), dim)
        return out

    async def _sized_request(self, texts: list[str]) -> list[np.ndarray]:
        """One request; refused for its size while holding more texts than any request
        answered so far (a refusal that names the most texts a request may hold, as TEI's 422
        does, or a 413 that names nothing), it is sent again in parts of the size named, else of
        half.  When every part is answered, that was it: max_inputs comes down to the part's
        size for good.  When a part is refused too, a text is: the first refusal goes up, for
        the worker to find the text (embed_rows), as any other refusal (400, 422) does."""
        try:
            return await self._paced_request(texts)
        except EmbeddingError as e:
            if (
                e.disposition is not Disposition.SPLIT
                or len(texts) == 1
                or len(texts) <= self.largest_answered
            ):
                raise
            named = _SIZE_LIMIT.search(str(e))
            if not (named or e.status == 413):
                raise
            size = int(named[1]) if named and 0 < int(named[1]) < len(texts) else len(texts) // 2
            vectors: list[np.ndarray] = []
            try:
                while len(vectors) < len(texts):  # (a part may have learned a smaller size)
                    step = min(size, self.max_inputs)
                    vectors += await self._sized_request(texts[len(vectors) : len(vectors) + step])
            except EmbeddingError as part:
                if part.disposition is Disposition.SPLIT:
                    raise e from None
                raise
            if size < self.max_inputs:
                self.max_inputs = size
                log.warning(
                    "the embedding server refused a request for its size; requests hold "
                    "fewer texts from now on (set EMBEDDING_MAX_INPUTS to the server's limit "
                    "to skip this)",
                    extra={"fields": {"refused": len(texts), "max_inputs": size}},
                )
            return vectors

    async def _paced_request(self, texts: list[str]) -> list[np.ndarray]:
        """One request; refused for a rate limit, it is sent again once the time the server
        named has passed (the pacer holds it), so that the requests of a batch that went
        through are not thrown away with it.  A limit that would hold a batch longer than
        RATE_LIMIT_PATIENCE seconds in all gives the batch back (RATE_LIMITED)."""
        waited = 0.0
        while True:
            try:
                return await self._embed_request(texts)
            except EmbeddingError as e:
                pause = e.retry_after or 0.0
                if e.disposition is not Disposition.RATE_LIMITED or (
                    waited + pause > RATE_LIMIT_PATIENCE
                ):
                    raise
                waited += pause
                log.info(
                    "rate limited by the embedding server; the request waits",
                    extra={"fields": {"wait_s": round(pause, 2), "texts": len(texts)}},
                )

    async def _embed_request(
        self, texts: list[str], timeout: float | None = None
    ) -> list[np.ndarray]:
        await self.pacer.acquire(texts)
        limit = timeout or self.config.timeout
        try:
            resp = await self.http.post(self.path, json=self.payload(texts), timeout=limit)
        except httpx.TimeoutException as e:
            raise EmbeddingError(
                f"timed out after {limit:g} s ({type(e).__name__})",
                Disposition.UNREACHABLE,
            ) from e
        except httpx.HTTPError as e:
            raise EmbeddingError(
                f"{type(e).__name__}: {e or 'connection failed'}", Disposition.UNREACHABLE
            ) from e
        if resp.status_code >= 300:
            err = self.classify(resp)
            err.status = resp.status_code
            if err.disposition is Disposition.RATE_LIMITED:
                err.retry_after = self.pacer.pause(err.retry_after)
            raise err
        data = _parse_json(resp)
        self.pacer.observe(resp.headers, texts, _usage(self, data))
        try:
            raw = self.vectors(data)
        except (KeyError, TypeError, IndexError, ValueError) as e:
            raise _unusable(
                f"reply has no embeddings where {self.config.api} puts them: "
                f"{type(e).__name__}: {e}"
            ) from None
        if not isinstance(raw, list) or len(raw) != len(texts):
            got = len(raw) if isinstance(raw, list) else type(raw).__name__
            raise _unusable(f"asked for {len(texts)} embeddings, got {got}")
        vectors = parse_vectors(raw)
        self.answered_at = time.monotonic()
        self.largest_answered = max(self.largest_answered, len(texts))
        return vectors


def _usage(client: EmbeddingClient, data: Any) -> int | None:
    try:
        n = client.usage(data)
    except (KeyError, TypeError, AttributeError):
        return None
    return n if isinstance(n, int) else None


def _unusable(message: str) -> EmbeddingError:
    return EmbeddingError(
        f"unusable reply from the embedding server: {message}", Disposition.BACK_OFF
    )


_NUMBER = {float, int}


def parse_vectors(raw: list[Any]) -> list[np.ndarray]:
    """JSON arrays of numbers to float32 rows.  Strictly numbers: a string such as "0.1" or a
    boolean in a vector makes the whole reply unusable (numpy would quietly convert both).
    Rows a protocol already decoded (base64: float32 arrays) pass as they are."""
    decoded = [isinstance(v, np.ndarray) for v in raw]
    if raw and all(decoded):
        return list(raw)
    for v, done in zip(raw, decoded, strict=True):
        if done:
            continue
        if type(v) is not list or not v:
            raise _unusable("an embedding is not a non-empty list of numbers")
        kinds = set(map(type, v))
        if not kinds <= _NUMBER:
            odd = sorted(k.__name__ for k in kinds - _NUMBER)
            raise _unusable(f"an embedding holds {', '.join(odd)} values, not only numbers")
    if not any(decoded) and len({len(v) for v in raw}) == 1:
        return list(np.asarray(raw, dtype=np.float32))
    return [np.asarray(v, dtype=np.float32) for v in raw]  # ragged or mixed: checked per row


async def embed_query(client: EmbeddingClient, text: str) -> np.ndarray:
    """One text (a search query, a new question) embedded; any failure is an EmbeddingError."""
    [vec] = await client.embed([text])
    if isinstance(vec, RowFailure):
        raise EmbeddingError(
            vec.message, Disposition.RETRY_LATER if vec.retryable else Disposition.SPLIT
        )
    return vec


def check_vectors(vectors: list[np.ndarray], dim: int | None) -> list[np.ndarray | RowFailure]:
    """Per vector: itself when it can be stored, else why not.  A dimension other than the
    column's in every vector is the server's (another model), in some of them a broken reply.
    Vectors of one shape (a sound reply) are checked together, in numpy."""
    if dim is not None and vectors and all(v.shape != (dim,) for v in vectors):
        raise _unusable(
            f"embeddings have {vectors[0].shape[0]} dimensions, the column has "
            f"{dim} (is EMBEDDING_MODEL the model the column was made for?)"
        )
    if not vectors:
        return []
    shape = vectors[0].shape
    if len(shape) == 1 and all(v.shape == shape for v in vectors):
        # (np.concatenate: np.stack costs ten times as much for a batch of 1-D arrays)
        matrix = np.concatenate(vectors).reshape(len(vectors), shape[0])
        finite = np.isfinite(matrix).all(axis=1).tolist()
        norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix)).tolist()
    else:
        finite = [bool(np.isfinite(v).all()) for v in vectors]
        norms = [float(np.linalg.norm(v)) for v in vectors]
    out: list[np.ndarray | RowFailure] = []
    for v, ok, n in zip(vectors, finite, norms, strict=True):
        if dim is not None and v.shape != (dim,):
            out.append(RowFailure(f"embedding has {v.shape[0]} dimensions, the column has {dim}"))
        elif not ok:
            out.append(RowFailure("embedding contains NaN or infinity"))
        elif not math.isfinite(n) or n == 0.0:
            out.append(RowFailure("embedding is a zero vector (no cosine direction)"))
        else:
            out.append(v)
    return out
