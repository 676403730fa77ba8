"""text-embeddings-inference (TEI): its request, its reply, and how its errors are classified."""

from __future__ import annotations

from .base import Disposition, EmbeddingClient, EmbeddingError, error_message


class TEIClient(EmbeddingClient):
    """text-embeddings-inference: POST /embed {"inputs": [...]} -> [[...], ...]."""

    path = "/embed"
    health_path = "/health"

    def payload(self, texts):
        return {"inputs": texts, "normalize": True, "truncate": False}

    def vectors(self, data):
        return data

    def classify(self, resp):
        if resp.status_code == 424:  # the backend failed on this input; may pass another time
            return EmbeddingError(
                f"HTTP 424 from {resp.request.url.path}: {error_message(resp)}",
                Disposition.RETRY_LATER,
            )
        return super().classify(resp)
