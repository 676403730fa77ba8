"""The text the pipeline embeds and the deterministic vectors the test server returns for it,
written independently of the SQL renderer they check."""

from __future__ import annotations

import hashlib
import re

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


def bigram_vector(text: str, dim: int = DIM) -> np.ndarray:
    """A deterministic unit vector that sees words: each word's character bigrams hashed into
    `dim` signed buckets, so that texts sharing words (광합성, 엽록체) are close.  Not a model:
    what the UI's tests use where a person looks at the similarities (the README's screenshot)."""
    v = np.zeros(dim, dtype=np.float32)
    for word in re.findall(r"\w+", text.lower()):
        for gram in [word[i : i + 2] for i in range(len(word) - 1)] or [word]:
            h = int.from_bytes(hashlib.blake2b(gram.encode(), digest_size=8).digest(), "little")
            v[h % dim] += 1.0 if h >> 63 else -1.0
    norm = np.linalg.norm(v)
    return v / norm if norm else vector_for(text, dim)
