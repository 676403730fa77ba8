"""The worker halves a rejected batch until the rejected rows are alone (no database: only
the embedding side of a batch is exercised)."""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pytest

from study_embed.embedders import Disposition, EmbeddingError, RowFailure
from study_embed.queue import Claim
from study_embed.settings import Settings
from study_embed.worker import Worker
from study_embed_dev.memory_queue import InMemoryQueue


class Embedder:
    """Rejects any request containing a poison text; counts requests."""

    def __init__(self, disposition: Disposition = Disposition.SPLIT) -> None:
        self.disposition = disposition
        self.requests: list[list[str]] = []

    async def healthy(self) -> bool:
        return True

    async def embed(self, texts, dim=None):
        self.requests.append(texts)
        if any("POISON" in t for t in texts):
            raise EmbeddingError("422 input too long", self.disposition)
        return [RowFailure("NaN") if "NAN" in t else np.ones(2, dtype=np.float32) for t in texts]


def claims(*bodies: str) -> list[Claim]:
    return [Claim(i, uuid.uuid4(), b) for i, b in enumerate(bodies)]


def run(embedder, batch):
    worker = Worker(Settings(), InMemoryQueue(), embedder)  # type: ignore[arg-type]
    return asyncio.run(worker.embed_rows(batch))


def test_one_poison_row_in_eight_is_found_in_log2_steps():
    e = Embedder()
    batch = claims(*[f"ok {i}" for i in range(7)], "POISON")
    done, failed = run(e, batch)
    assert [c.id for c, _ in done] == list(range(7))
    assert [(f.claim.id, f.retryable) for f in failed] == [(7, False)]
    assert "rejected by the embedding server" in failed[0].error
    assert len(e.requests) == 1 + 2 + 2 + 2  # the batch, then one split per level


def test_retry_later_fails_the_row_for_another_try():
    done, failed = run(Embedder(Disposition.RETRY_LATER), claims("POISON", "ok"))
    assert [c.id for c, _ in done] == [1] and failed[0].retryable


def test_a_row_whose_vector_cannot_be_stored_fails_alone():
    done, failed = run(Embedder(), claims("ok", "NAN", "ok"))
    assert [c.id for c, _ in done] == [0, 2]
    assert failed[0].claim.id == 1 and "NaN" in failed[0].error and failed[0].retryable


@pytest.mark.parametrize("disposition", [Disposition.UNREACHABLE, Disposition.BACK_OFF])
def test_a_server_side_failure_is_not_split(disposition):
    e = Embedder(disposition)
    with pytest.raises(EmbeddingError):
        run(e, claims("POISON", "ok", "ok"))
    assert len(e.requests) == 1
