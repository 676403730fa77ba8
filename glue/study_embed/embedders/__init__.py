"""Embedding clients: TEI, OpenAI-compatible and Ollama, behind one interface.

`embed(texts, dim)` returns, per text in order, a float32 vector or a `RowFailure` (the server
answered for the batch, but this row's vector cannot be stored: NaN, infinity, a zero vector).
When the batch as a whole cannot be embedded it raises `EmbeddingError`, whose `disposition`
says what that means for the rows; each protocol classifies its own server's answers:

- UNREACHABLE: no answer at all (connection refused or reset, timeout).  The rows are fine:
  give them back and wait, probing the server's health.
- BACK_OFF: the server answered but will not serve now (408, 429, 5xx, bad credentials, unknown
  model or route) or answered 2xx with something that is not the embeddings asked for (HTML from
  a proxy, not JSON, wrong count or dimension, strings or booleans for numbers).  The rows are
  fine: give them back and leave the server alone for a while.
- SPLIT: the server rejected the input (400, 413, 422): some row in the request is bad; halve
  the request to find it.  A single row that is rejected fails for good (until it is edited).
- RETRY_LATER: the server failed on this input but may not next time (TEI's 424): halve; a
  single row fails and is retried later.
"""

from __future__ import annotations

from .base import (
    ClientConfig,
    Disposition,
    EmbeddingClient,
    EmbeddingError,
    RowFailure,
    check_vectors,
    embed_query,
    parse_vectors,
)
from .ollama import OllamaClient
from .openai import OpenAIClient
from .tei import TEIClient

CLIENTS: dict[str, type[EmbeddingClient]] = {
    "tei": TEIClient,
    "openai": OpenAIClient,
    "ollama": OllamaClient,
}


def make_client(config: ClientConfig) -> EmbeddingClient:
    return CLIENTS[config.api](config)


__all__ = [
    "CLIENTS",
    "ClientConfig",
    "Disposition",
    "EmbeddingClient",
    "EmbeddingError",
    "OllamaClient",
    "OpenAIClient",
    "RowFailure",
    "TEIClient",
    "check_vectors",
    "embed_query",
    "make_client",
    "parse_vectors",
]
