"""The listener's queue client (study_embed.queue) against PostgreSQL: a batch's vectors,
sent as one `vector[]` built by numpy (database.VectorRows), arrive as they were sent."""

from __future__ import annotations

import numpy as np
import pytest

from study_embed.queue import QueueClient
from study_embed_dev.vectors import DIM

from ..helpers import TEST_MODEL


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_complete_stores_every_vector_of_a_batch_bit_for_bit(bank, db_url):
    ids = [bank.insert(f"question {i}") for i in range(5)]
    rng = np.random.default_rng(7)
    # values float32 holds exactly, and ones it rounds: each must come back as the same float32
    vectors = [rng.standard_normal(DIM).astype(np.float32) for _ in ids]
    vectors[0][:3] = [np.float32(1e-38), np.float32(-3.4e38), np.float32(0.1)]
    queue = QueueClient(db_url, max_size=1)
    await queue.open()
    try:
        claims = await queue.claim(len(ids), 60)
        assert sorted(c.id for c in claims) == ids
        written = await queue.complete(list(zip(claims, vectors, strict=True)), TEST_MODEL)
    finally:
        await queue.close()
    assert written == set(ids)
    for claim, sent in zip(claims, vectors, strict=True):
        row = bank.row(claim.id)
        assert row["embedding_status"] == "ready"
        assert row["embedding"].to_numpy().astype(np.float32).tobytes() == sent.tobytes()
