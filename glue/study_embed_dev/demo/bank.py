"""The demo's sample question bank: four users, Korean and English, several subjects, read from
bank.yaml beside this file (the format of eval/set.yaml), and the history of answers the demo
writes for it.  Deterministic: the same bank, ids and attempts on every run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import yaml

DATA = Path(__file__).with_name("bank.yaml")


@dataclass(frozen=True)
class Q:
    subject: str
    scope: str
    text: str
    choices: tuple[str, str, str, str]
    correct: int  # 1..4
    explanation: str | None = None
    weak: bool = False  # the user tends to get it wrong
    twin: str | None = None  # the same question typed twice in other words share a twin


@dataclass
class User:
    email: str
    about: str
    questions: list[Q] = field(default_factory=list)


@cache
def _load() -> tuple[tuple[str, str, tuple[Q, ...]], ...]:
    users = yaml.safe_load(DATA.read_text())["users"]
    return tuple(
        (
            u["email"],
            u["about"],
            tuple(
                Q(
                    q["subject"],
                    q["scope"],
                    q["q"],
                    tuple(q["c"]),
                    q["answer"],
                    q.get("explanation"),
                    q.get("weak", False),
                    q.get("twin"),
                )
                for q in u["questions"]
            ),
        )
        for u in users
    )


def users() -> list[User]:
    return [User(email, about, list(questions)) for email, about, questions in _load()]


def attempts(user: User, rng: random.Random) -> list[tuple[int, int, int]]:
    """(question index, selected choice, days ago): most questions answered once or twice; the
    user's weak questions answered wrongly more often than not, and wrongly last."""
    out = []
    for i, q in enumerate(user.questions):
        tries = rng.randint(1, 3)
        gaps = [rng.randint(1, 9) for _ in range(tries)]
        for t in range(tries):
            days_ago = sum(gaps[t:])  # strictly fewer days ago for each new try
            last = t == tries - 1
            if q.weak:
                wrong = last or rng.random() < 0.6
            else:
                wrong = not last and rng.random() < 0.08
            if wrong:
                selected = rng.choice([c for c in range(1, 5) if c != q.correct])
            else:
                selected = q.correct
            out.append((i, selected, days_ago))
    return out
