"""Ollama's native /api/embed."""

from __future__ import annotations

from .base import EmbeddingClient


class OllamaClient(EmbeddingClient):
    """Ollama: POST /api/embed {"model", "input": [...]} -> {"embeddings": [[...]]}."""

    path = "/api/embed"
    health_path = "/api/version"
    default_max_inputs = 128  # /api/embed takes any number of inputs

    def payload(self, texts):
        return {
            "model": self.config.model,
            "input": texts,
            "truncate": False,
            "options": {"num_ctx": 8192},
        }

    def vectors(self, data):
        return data["embeddings"]
