"""Embedding clients: TEI, OpenAI-compatible and Ollama, behind one interface.

Every client turns a list of texts into a list of float32 vectors, one per text, in order, or
raises one of the errors below, which say what the failure means for the rows:

- TransientError: the server is unavailable (connection refused, timeout, 408/429/5xx, bad
  credentials or unknown model): nothing is wrong with the rows; give them back, back off.
- InputError: the server rejected the input (400, 413, 422; TEI's tokenizer and validation
  errors): some row in the request is bad; split the request to find it.
- MalformedReply: the server answered 2xx with something that is not the embeddings asked for
  (not JSON, HTML, wrong count, wrong dimension, NaN/inf, a zero vector).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import orjson


class EmbeddingError(Exception):
    """Base of the errors an embedding request can end with."""


class TransientError(EmbeddingError):
    """The server is unavailable; the rows are fine."""


class InputError(EmbeddingError):
    """The server rejected the input.  `retryable` when it may pass another time (TEI 424)."""

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class MalformedReply(EmbeddingError):
    """A 2xx reply that does not hold the embeddings asked for."""


@dataclass(frozen=True)
class ClientConfig:
    api: str = "tei"
    url: str = "http://127.0.0.1:8080"
    model: str = "BAAI/bge-m3"
    api_key: str | None = None
    timeout: float = 15.0
    max_inputs: int = 32


def _snippet(body: str, limit: int = 300) -> str:
    body = " ".join(body.split())
    return body if len(body) <= limit else body[:limit] + "…"


def _error_message(resp: httpx.Response) -> str:
    """The server's own words: TEI {error, error_type}, OpenAI {error: {message}}, Ollama {error}."""
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
        raise MalformedReply(f"reply is not JSON (content-type {ctype}): "
                             f"{_snippet(resp.text, 120)!r}") from None


def classify(resp: httpx.Response) -> EmbeddingError:
    """What an HTTP error status means for the rows in the request."""
    status = resp.status_code
    msg = f"HTTP {status} from {resp.request.url.path}: {_error_message(resp)}"
    if status in (400, 413, 422):
        return InputError(msg)
    if status == 424:  # TEI: the backend failed on this input; may pass on a retry
        return InputError(msg, retryable=True)
    if status in (401, 403):
        return TransientError(msg + " — check EMBEDDING_API_KEY")
    if status == 404:
        return TransientError(msg + " — check EMBEDDING_URL, EMBEDDING_API and EMBEDDING_MODEL")
    return TransientError(msg)  # 408, 425, 429, 5xx and anything else unexpected


class EmbeddingClient:
    """One protocol: how to ask, and where the vectors are in the reply."""

    path = ""

    def __init__(self, config: ClientConfig, http: httpx.AsyncClient | None = None) -> None:
        self.config = config
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self.http = http or httpx.AsyncClient(
            base_url=config.url.rstrip("/"), headers=headers,
            timeout=httpx.Timeout(config.timeout),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16))

    def payload(self, texts: list[str]) -> dict[str, Any]:
        raise NotImplementedError

    def vectors(self, data: Any) -> list[Any]:
        raise NotImplementedError

    async def aclose(self) -> None:
        await self.http.aclose()

    async def embed(self, texts: list[str]) -> list[np.ndarray]:
        """Embed texts in requests of at most max_inputs; the vectors come back in order."""
        out: list[np.ndarray] = []
        step = self.config.max_inputs
        for i in range(0, len(texts), step):
            out += await self._embed_request(texts[i:i + step])
        return out

    async def _embed_request(self, texts: list[str]) -> list[np.ndarray]:
        try:
            resp = await self.http.post(self.path, json=self.payload(texts))
        except httpx.TimeoutException as e:
            raise TransientError(f"timed out after {self.config.timeout:g} s "
                                 f"({type(e).__name__})") from e
        except httpx.HTTPError as e:
            raise TransientError(f"{type(e).__name__}: {e or 'connection failed'}") from e
        if resp.status_code >= 300:
            raise classify(resp)
        data = _parse_json(resp)
        try:
            raw = self.vectors(data)
        except (KeyError, TypeError, IndexError, ValueError) as e:
            raise MalformedReply(f"reply has no embeddings where {self.config.api} puts them: "
                                 f"{type(e).__name__}: {e}") from None
        if not isinstance(raw, list) or len(raw) != len(texts):
            got = len(raw) if isinstance(raw, list) else type(raw).__name__
            raise MalformedReply(f"asked for {len(texts)} embeddings, got {got}")
        return self._vectors(raw)

    @staticmethod
    def _vectors(raw: list) -> list[np.ndarray]:
        """Lists of numbers to float32 rows, in one numpy call when they are all alike."""
        try:
            matrix = np.asarray(raw, dtype=np.float32)
        except (ValueError, TypeError):
            matrix = None
        if matrix is not None and matrix.ndim == 2 and matrix.shape[1] > 0:
            return list(matrix)
        out = []
        for v in raw:  # ragged (a wrong dimension somewhere) or not numbers at all
            try:
                vec = np.asarray(v, dtype=np.float32)
            except (ValueError, TypeError):
                raise MalformedReply("an embedding is not a list of numbers") from None
            if vec.ndim != 1 or vec.shape[0] == 0:
                raise MalformedReply("an embedding is not a list of numbers")
            out.append(vec)
        return out


class TEIClient(EmbeddingClient):
    """text-embeddings-inference: POST /embed {"inputs": [...]} -> [[...], ...]."""

    path = "/embed"

    def payload(self, texts):
        return {"inputs": texts, "normalize": True, "truncate": False}

    def vectors(self, data):
        return data


class OpenAIClient(EmbeddingClient):
    """OpenAI-compatible: POST /v1/embeddings -> {"data": [{"index", "embedding"}]} (any order)."""

    path = "/v1/embeddings"

    def payload(self, texts):
        return {"model": self.config.model, "input": texts, "encoding_format": "float"}

    def vectors(self, data):
        items = data["data"]
        if not isinstance(items, list):
            raise TypeError("data is not a list")
        indexes = [it["index"] for it in items]
        if sorted(indexes) != list(range(len(items))):
            raise ValueError(f"indexes are not 0..{len(items) - 1}: {indexes[:10]}")
        return [it["embedding"] for it in sorted(items, key=lambda it: it["index"])]


class OllamaClient(EmbeddingClient):
    """Ollama: POST /api/embed {"model", "input": [...]} -> {"embeddings": [[...]]}."""

    path = "/api/embed"

    def payload(self, texts):
        return {"model": self.config.model, "input": texts, "truncate": False,
                "options": {"num_ctx": 8192}}

    def vectors(self, data):
        return data["embeddings"]


CLIENTS: dict[str, type[EmbeddingClient]] = {
    "tei": TEIClient, "openai": OpenAIClient, "ollama": OllamaClient}


def make_client(config: ClientConfig) -> EmbeddingClient:
    return CLIENTS[config.api](config)


def check_vectors(vectors: list[np.ndarray], dim: int) -> list[str | None]:
    """Per vector: None when it can be stored, else why not."""
    problems: list[str | None] = []
    for v in vectors:
        if v.shape != (dim,):
            problems.append(f"embedding has {v.shape[0]} dimensions, the column has {dim}")
        elif not np.isfinite(v).all():
            problems.append("embedding contains NaN or infinity")
        elif not math.isfinite(n := float(np.linalg.norm(v))) or n == 0.0:
            problems.append("embedding is a zero vector (no cosine direction)")
        else:
            problems.append(None)
    return problems
