"""OpenAI-compatible servers (OpenAI, vLLM, Infinity, LiteLLM, TEI's and Ollama's /v1 routes)."""

from __future__ import annotations

from .base import EmbeddingClient


class OpenAIClient(EmbeddingClient):
    """OpenAI-compatible: POST /v1/embeddings -> {"data": [{"index", "embedding"}]} (any order)."""

    path = "/v1/embeddings"
    health_path = "/v1/models"

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

    def usage(self, data):
        return data["usage"]["prompt_tokens"]
