"""The evaluation behind `make eval`: the labelled set (eval/set.yaml), loaded into a database
through the real pipeline, and the figures computed from what the pipeline stored.

Pure functions (the pairs a set implies, precision/recall, the best threshold, reciprocal ranks,
cluster purity) are separate from `evaluate()`, which talks to PostgreSQL and the embedding
server, so that the arithmetic can be checked on its own.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import yaml
from pgvector.psycopg import register_vector

from study_embed.bank import Bank
from study_embed.embedders import EmbeddingClient, RowFailure

from .rows import add_attempts, add_question, add_topic, add_user, one_value

ROLES = ("base", "same", "flip")
# cluster thresholds tried besides the pipeline's own (the model's, else the function's default)
CLUSTER_THRESHOLDS = (0.75, 0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.96)


@dataclass(frozen=True)
class Question:
    key: tuple[int, str]  # (group, role)
    subject: str
    text: str
    choices: tuple[str, str, str, str]
    correct: int = 1  # the number of the correct choice

    @property
    def answer(self) -> str:
        """The correct choice's text, normalised (case, spaces)."""
        return " ".join(self.choices[self.correct - 1].lower().split())


@dataclass(frozen=True)
class Pair:
    a: tuple[int, str]
    b: tuple[int, str]
    kind: str  # rephrase | negative | same_topic

    @property
    def duplicate(self) -> bool:
        return self.kind == "rephrase"


@dataclass(frozen=True)
class Query:
    group: int
    subject: str
    text: str
    relevant: frozenset[tuple[int, str]]


@dataclass(frozen=True)
class EvalSet:
    questions: list[Question]
    pairs: list[Pair]
    queries: list[Query]


def load_set(path: Path) -> EvalSet:
    groups = yaml.safe_load(path.read_text())["groups"]
    questions, pairs, queries = [], [], []
    last_base: dict[str, tuple[int, str]] = {}
    for g, group in enumerate(groups):
        subject = group["subject"]
        answers = group.get("answers", [1, 1, 1])
        for role, correct in zip(ROLES, answers, strict=True):
            q = group[role]
            c1, c2, c3, c4 = q["c"]
            questions.append(Question((g, role), subject, q["q"], (c1, c2, c3, c4), correct))
        pairs.append(Pair((g, "base"), (g, "same"), "rephrase"))
        pairs.append(Pair((g, "base"), (g, "flip"), "negative"))
        pairs.append(Pair((g, "same"), (g, "flip"), "negative"))
        if subject in last_base:  # neighbouring groups of one subject: same topic, not the same
            pairs.append(Pair(last_base[subject], (g, "base"), "same_topic"))
        last_base[subject] = (g, "base")
        queries.append(Query(g, subject, group["query"], frozenset({(g, "base"), (g, "same")})))
    return EvalSet(questions, pairs, queries)


# -- the arithmetic --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PRF:
    threshold: float
    precision: float
    recall: float
    f1: float
    true_pos: int
    false_pos: int
    false_neg: int


def prf(scored: Sequence[tuple[float, bool]], threshold: float) -> PRF:
    """Precision, recall and F1 of 'similarity >= threshold means duplicate'.  Precision is 1
    when nothing is flagged (no false alarm), recall 1 when there is nothing to find."""
    tp = sum(1 for s, dup in scored if s >= threshold and dup)
    fp = sum(1 for s, dup in scored if s >= threshold and not dup)
    fn = sum(1 for s, dup in scored if s < threshold and dup)
    p = tp / (tp + fp) if tp + fp else 1.0
    r = tp / (tp + fn) if tp + fn else 1.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return PRF(threshold, p, r, f, tp, fp, fn)


def best_threshold(scored: Sequence[tuple[float, bool]]) -> PRF:
    """The threshold (one of the scores) with the best F1; ties go to the higher threshold."""
    candidates = sorted({s for s, _ in scored}, reverse=True)
    return max((prf(scored, t) for t in candidates), key=lambda r: (r.f1, r.threshold))


def precision_at_recall(scored: Sequence[tuple[float, bool]], recall: float) -> PRF | None:
    """The most precise threshold whose recall is at least `recall` (None: none reaches it)."""
    ok = [prf(scored, t) for t in sorted({s for s, _ in scored}) if prf(scored, t).recall >= recall]
    return max(ok, key=lambda r: (r.precision, r.threshold)) if ok else None


def reciprocal_rank(ranked: Sequence[Any], relevant: Iterable[Any]) -> float:
    rel = set(relevant)
    return next((1.0 / (i + 1) for i, x in enumerate(ranked) if x in rel), 0.0)


def search_figures(results: Sequence[tuple[Sequence[Any], Iterable[Any]]]) -> dict[str, float]:
    """recall@1 and recall@10 (a relevant question among the first 1 / 10) and MRR."""
    rr = [reciprocal_rank(ranked[:10], rel) for ranked, rel in results]
    n = len(results) or 1
    return {
        "recall_at_1": sum(1 for r in rr if r == 1.0) / n,
        "recall_at_10": sum(1 for r in rr if r > 0) / n,
        "mrr": sum(rr) / n,
        "queries": len(results),
    }


def purity(clusters: Sequence[Sequence[Any]], label: dict[Any, Any]) -> dict[str, float]:
    """Purity (each cluster counted by its most common label) and inverse purity (each label by
    the cluster holding most of it): singletons give purity 1 and low inverse purity, one big
    cluster the reverse, so both are printed."""
    n = sum(len(c) for c in clusters) or 1
    pure = sum(Counter(label[x] for x in c).most_common(1)[0][1] for c in clusters if c)
    by_label: dict[Any, Counter[int]] = defaultdict(Counter)
    for i, c in enumerate(clusters):
        for x in c:
            by_label[label[x]][i] += 1
    inverse = sum(cnt.most_common(1)[0][1] for cnt in by_label.values())
    return {"purity": pure / n, "inverse_purity": inverse / n, "clusters": len(clusters)}


# -- running it -----------------------------------------------------------------------------------


def load(url: str, s: EvalSet) -> tuple[dict[tuple[int, str], int], dict[str, int]]:
    """Every question by plain SQL, one user per subject, each answered wrongly once."""
    ids: dict[tuple[int, str], int] = {}
    users: dict[str, tuple[int, int]] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        for q in s.questions:
            if q.subject not in users:
                uid = add_user(conn, f"eval-{len(users)}@example.com")
                users[q.subject] = (uid, add_topic(conn, uid, q.subject))
            uid, tid = users[q.subject]
            ids[q.key] = add_question(
                conn, uid, tid, q.text, q.choices, q.correct, subject=q.subject
            )
            add_attempts(conn, [(uid, ids[q.key], tid, q.correct % 4 + 1, q.correct, None)])
    return ids, {subject: uid for subject, (uid, _) in users.items()}


def drain(url: str, env: dict[str, str]) -> None:
    """The real pipeline: `study-embed drain` against the configured server."""
    r = subprocess.run(
        [sys.executable, "-m", "study_embed.cli", "drain"],
        env={**os.environ, **env, "DATABASE_URL": url, "LOG_LEVEL": "WARNING"},
    )
    if r.returncode != 0:
        raise SystemExit(f"eval: the drain failed (exit {r.returncode})")


async def _search_all(
    url: str, client: EmbeddingClient, s: EvalSet, user_of: dict[str, int]
) -> tuple[list[list[int]], list[list[int]]]:
    """Each query through search_questions (dense) and search_questions_hybrid."""
    db = Bank.database(url, max_size=1, app_name="study-embed eval")
    await db.open()
    bank = Bank(db)
    try:
        vectors = await client.embed([q.text for q in s.queries])
        dense, hybrid = [], []
        for q, vec in zip(s.queries, vectors, strict=True):
            if isinstance(vec, RowFailure):
                raise SystemExit(f"eval: the server could not embed the query {q.text!r}")
            hits = await bank.search_vector(user_of[q.subject], vec, None, 10, None)
            dense.append([h.id for h in hits])
            fused = await bank.search_vector(user_of[q.subject], vec, q.text, 10, None)
            hybrid.append([h.id for h in fused])
        return dense, hybrid
    finally:
        await db.close()
        await client.aclose()


def evaluate(url: str, s: EvalSet, client: EmbeddingClient, env: dict[str, str]) -> dict:
    ids, user_of = load(url, s)
    drain(url, env)
    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        vec = {
            qid: np.asarray(v.to_numpy(), dtype=np.float64)
            for qid, v in conn.execute("SELECT id, embedding FROM study_questions")
        }
        # the threshold the pipeline uses for these rows: the model's, else the setting
        threshold = float(
            one_value(
                conn,
                "SELECT coalesce((SELECT m.duplicate_threshold FROM study_embed.model_thresholds m"
                " WHERE m.model = (SELECT max(embedding_model) FROM study_questions)),"
                " s.duplicate_threshold) FROM study_embed.settings s",
            )
        )
        # the pipeline's own near-duplicate pass, to its end
        conn.execute("SELECT study_embed.detect_duplicates('1 hour')")
        flagged = {
            frozenset(r)
            for r in conn.execute(
                "SELECT question_id, duplicate_of FROM study_embed.duplicate_candidates"
                " WHERE dismissed_at IS NULL"
            )
        }
        by_id = {v: k for k, v in ids.items()}

        def clusters_at(threshold: float | None) -> list[list]:
            out: list[list] = []
            for uid in user_of.values():
                rows = conn.execute(  # no threshold: the function's own choice
                    "SELECT cluster, question_id"
                    " FROM study_embed.wrong_answer_clusters(%s, 500, %s::real)"
                    if threshold is not None
                    else "SELECT cluster, question_id"
                    " FROM study_embed.wrong_answer_clusters(%s, 500)",
                    (uid, threshold) if threshold is not None else (uid,),
                ).fetchall()
                grouped: dict[int, list] = defaultdict(list)
                for c, qid in rows:
                    grouped[c].append(by_id[qid])
                out += list(grouped.values())
            return out

        labels = {k: k[0] for k in ids}
        clusters = clusters_at(None)
        by_threshold = {t: purity(clusters_at(t), labels) for t in CLUSTER_THRESHOLDS}

    def cos(a: int, b: int) -> float:
        x, y = vec[a], vec[b]
        return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))

    scored = [(cos(ids[p.a], ids[p.b]), p.duplicate) for p in s.pairs]
    # a second signal: a duplicate asks for the same answer; two questions whose correct
    # choices differ are never duplicates, however alike they read
    question = {q.key: q for q in s.questions}
    answer_scored = [
        (sim if question[p.a].answer == question[p.b].answer else -1.0, dup)
        for p, (sim, dup) in zip(s.pairs, scored, strict=True)
    ]
    kinds: dict[str, list[float]] = defaultdict(list)
    for p, (sim, _) in zip(s.pairs, scored, strict=True):
        kinds[p.kind].append(sim)
    dense, hybrid = asyncio.run(_search_all(url, client, s, user_of))
    search, search_hybrid = (
        search_figures(
            [([by_id[i] for i in r], q.relevant) for r, q in zip(ranked, s.queries, strict=True)]
        )
        for ranked in (dense, hybrid)
    )
    at_80 = precision_at_recall(scored, 0.80)
    # what the pass recorded, on the labelled pairs: 1 for a recorded pair, 0 for the others
    passed = [
        (1.0 if frozenset((ids[p.a], ids[p.b])) in flagged else 0.0, p.duplicate) for p in s.pairs
    ]
    answer_at_80 = precision_at_recall(answer_scored, 0.80)
    return {
        "questions": len(s.questions),
        "pairs": dict(Counter(p.kind for p in s.pairs)),
        "similarity_by_kind": {
            k: {"median": float(np.median(v)), "min": min(v), "max": max(v)}
            for k, v in kinds.items()
        },
        "duplicates_pipeline": prf(passed, 0.5).__dict__ | {"threshold": threshold},
        "duplicates_at_configured": prf(scored, threshold).__dict__,
        "duplicates_best_f1": best_threshold(scored).__dict__,
        "duplicates_best_precision_at_recall_0_80": None if at_80 is None else at_80.__dict__,
        "duplicates_same_answer_at_configured": prf(answer_scored, threshold).__dict__,
        "duplicates_same_answer_best_f1": best_threshold(answer_scored).__dict__,
        "duplicates_same_answer_best_precision_at_recall_0_80": None
        if answer_at_80 is None
        else answer_at_80.__dict__,
        "search": search,
        "search_hybrid": search_hybrid,
        "clusters": purity(clusters, labels),
        "clusters_by_threshold": {str(t): v for t, v in by_threshold.items()},
    }
