"""The text the pipeline embeds and the deterministic vectors the test server returns for it,
written independently of the SQL renderer they check."""

from __future__ import annotations

import hashlib

import numpy as np

DIM = 1024


def render(question: str, c1: str, c2: str, c3: str, c4: str) -> str:
    """The mission's text."""
    return f"문제: {question}\n보기:\n1. {c1}\n2. {c2}\n3. {c3}\n4. {c4}"


def vector_for(text: str, dim: int = DIM) -> np.ndarray:
    """A deterministic unit vector for a text: what the test embedding server returns."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)
