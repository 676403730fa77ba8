"""OpenAI-compatible servers (OpenAI, vLLM, Infinity, LiteLLM, TEI's and Ollama's /v1 routes).

Vectors are asked for as base64 (`encoding_format: "base64"`: the float32 bytes, little-endian),
a quarter of the bytes of JSON numbers and decoded without parsing a number: most of what the
listener spends per row went on reading and parsing JSON floats (BENCHMARKS.md).  A server that
ignores the field and answers with numbers (TEI's /v1 route) is read as before.  pybase64
decodes them with SIMD: the standard library's binascii took 12 µs a 1,024-dimension vector,
more than anything else the listener does per row, pybase64 under 1 µs.
"""

from __future__ import annotations

import binascii

import numpy as np
import pybase64

from .base import EmbeddingClient


class OpenAIClient(EmbeddingClient):
    """OpenAI-compatible: POST /v1/embeddings -> {"data": [{"index", "embedding"}]} (any order)."""

    path = "/v1/embeddings"
    health_path = "/v1/models"
    # OpenAI takes 2,048 inputs a request, vLLM and Ollama any number; TEI's route says its
    # limit when it refuses (32 by default), and the client keeps to it from then on
    default_max_inputs = 128

    def payload(self, texts):
        return {"model": self.config.model, "input": texts, "encoding_format": "base64"}

    def vectors(self, data):
        items = data["data"]
        if not isinstance(items, list):
            raise TypeError("data is not a list")
        indexes = [it["index"] for it in items]
        if sorted(indexes) != list(range(len(items))):
            raise ValueError(f"indexes are not 0..{len(items) - 1}: {indexes[:10]}")
        return [_decoded(it["embedding"]) for it in sorted(items, key=lambda it: it["index"])]

    def usage(self, data):
        return data["usage"]["prompt_tokens"]


def _decoded(embedding):
    """A base64 embedding as float32 (copied: writable, aligned); numbers as they came."""
    if not isinstance(embedding, str):
        return embedding
    try:  # strict: only the alphabet, padding only at the end
        raw = pybase64.b64decode(embedding, validate=True)
    except (binascii.Error, ValueError) as e:  # (ValueError: not ASCII)
        raise ValueError(f"an embedding is not valid base64: {e}") from None
    if not raw or len(raw) % 4:
        raise ValueError(f"a base64 embedding of {len(raw)} bytes is not float32 values")
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)
