"""The evaluation behind `make eval`: the labelled set (eval/set.yaml), loaded into a database
through the real pipeline, and the figures computed from what the pipeline stored.

Pure functions (the pairs a set implies, precision/recall, the best threshold, reciprocal ranks,
the adjusted Rand index, context precision) are separate from `evaluate()`, which talks to
PostgreSQL and the embedding server, so that the arithmetic can be checked on its own.
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
CLUSTER_THRESHOLDS = (0.72, 0.74, 0.75, 0.755, 0.76, 0.77, 0.80, 0.86, 0.87, 0.88, 0.89, 0.90, 0.94)
# relevance floors tried for explanation context besides the model's own
CONTEXT_FLOORS = (0.50, 0.60, 0.70, 0.80, 0.85, 0.87, 0.88, 0.89, 0.90, 0.91, 0.92, 0.93)
CONTEXT_K = 3  # the context's size that precision is measured at


@dataclass(frozen=True)
class Question:
    key: tuple[int, str]  # (group, role); a question of the concepts section: (-1 - k, "c<j>")
    subject: str
    text: str
    choices: tuple[str, str, str, str]
    correct: int = 1  # the number of the correct choice
    concept: str = ""  # what a learner would call the thing they keep missing

    @property
    def in_group(self) -> bool:
        return self.key[0] >= 0

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
    data = yaml.safe_load(path.read_text())
    groups = data["groups"]
    questions, pairs, queries = [], [], []
    last_base: dict[str, tuple[int, str]] = {}
    for g, group in enumerate(groups):
        subject = group["subject"]
        answers = group.get("answers", [1, 1, 1])
        concept = group.get("concept") or f"group {g}"  # a group without one is its own
        for role, correct in zip(ROLES, answers, strict=True):
            q = group[role]
            c1, c2, c3, c4 = q["c"]
            questions.append(
                Question((g, role), subject, q["q"], (c1, c2, c3, c4), correct, concept)
            )
        pairs.append(Pair((g, "base"), (g, "same"), "rephrase"))
        pairs.append(Pair((g, "base"), (g, "flip"), "negative"))
        pairs.append(Pair((g, "same"), (g, "flip"), "negative"))
        if subject in last_base:  # neighbouring groups of one subject: same topic, not the same
            pairs.append(Pair(last_base[subject], (g, "base"), "same_topic"))
        last_base[subject] = (g, "base")
        queries.append(Query(g, subject, group["query"], frozenset({(g, "base"), (g, "same")})))
    for k, concept in enumerate(data.get("concepts", [])):
        for j, q in enumerate(concept["questions"]):
            c1, c2, c3, c4 = q["c"]
            questions.append(
                Question(
                    (-1 - k, f"c{j}"),
                    concept["subject"],
                    q["q"],
                    (c1, c2, c3, c4),
                    q["a"],
                    concept["concept"],
                )
            )
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


def adjusted_rand_index(truth: Sequence[Any], found: Sequence[Any]) -> float:
    """Hubert and Arabie's adjusted Rand index of two labellings of the same items: 1 when they
    group alike, about 0 for a random grouping (and for all-singletons against real groups)."""

    def pairs(n: int) -> float:
        return n * (n - 1) / 2

    if len(truth) != len(found):
        raise ValueError("two labellings of the same items are needed")
    both = sum(pairs(v) for v in Counter(zip(truth, found, strict=True)).values())
    a = sum(pairs(v) for v in Counter(truth).values())
    b = sum(pairs(v) for v in Counter(found).values())
    expected = a * b / pairs(len(truth)) if len(truth) > 1 else 0.0
    best = (a + b) / 2
    return 1.0 if best == expected else (both - expected) / (best - expected)


def concept_figures(clusters: Sequence[Sequence[Any]], concept: dict[Any, str]) -> dict:
    """Clusters against concepts: the adjusted Rand index, and the share of singletons among
    the questions of concepts with at least 3 wrong answers (what a learner sees as crumbs)."""
    found = {x: i for i, c in enumerate(clusters) for x in c}
    items = sorted(found, key=repr)
    sizes = Counter(concept[x] for x in items)
    counted = [x for x in items if sizes[concept[x]] >= 3]
    alone = sum(1 for x in counted if len(clusters[found[x]]) == 1)
    return {
        "adjusted_rand_index": adjusted_rand_index(
            [concept[x] for x in items], [found[x] for x in items]
        ),
        "singletons": alone / len(counted) if counted else 0.0,
        "clusters": len(clusters),
        "concepts": len(sizes),
        "questions": len(items),
    }


def context_figures(
    contexts: dict[Any, Sequence[tuple[Any, float]]], concept: dict[Any, str], floor: float
) -> dict:
    """Explanation context at a relevance floor: precision (the share of the context's
    questions of the asking question's concept) and how often the context is empty."""
    kept = {q: [x for x, sim in rows if sim >= floor] for q, rows in contexts.items()}
    shown = [(q, x) for q, xs in kept.items() for x in xs]
    return {
        "floor": floor,
        "precision": sum(1 for q, x in shown if concept[q] == concept[x]) / len(shown)
        if shown
        else 1.0,
        "empty": sum(1 for xs in kept.values() if not xs) / (len(kept) or 1),
        "rows": len(shown),
    }


# -- running it -----------------------------------------------------------------------------------


@dataclass
class Loaded:
    ids: dict[tuple[int, str], int]  # the group questions, one user per subject
    user_of: dict[str, int]  # subject -> user
    # learners, each with a bank of their own, every question answered wrongly and explained:
    # key -> question id (the clusters and the context are measured on these)
    learners: dict[str, tuple[int, dict[int, tuple[int, str]]]]


EXPLAINED = "해설: 정답의 근거를 설명한다."  # every learner question carries an explanation


def _missed(conn: psycopg.Connection, uid: int, tid: int, q: Question, **columns: Any) -> int:
    """A question of the set in a user's bank, answered wrongly once; its id."""
    qid = add_question(conn, uid, tid, q.text, q.choices, q.correct, subject=q.subject, **columns)
    add_attempts(conn, [(uid, qid, tid, q.correct % 4 + 1, q.correct, None)])
    return qid


def load(url: str, s: EvalSet) -> Loaded:
    """Every group question by plain SQL, one user per subject, each answered wrongly once;
    then three learners: `all` (every question of the set), `concepts` (the concepts section
    alone: a bank of tight concepts the groups did not shape) and `sparse` (one question of each
    concept: nothing related to any of them), every question wrong once and explained."""
    ids: dict[tuple[int, str], int] = {}
    users: dict[str, tuple[int, int]] = {}
    learners: dict[str, tuple[int, dict[int, tuple[int, str]]]] = {}
    first_of: dict[str, Question] = {}
    for q in s.questions:
        first_of.setdefault(q.concept, q)
    banks = {
        "all": s.questions,
        "concepts": [q for q in s.questions if not q.in_group],
        "sparse": list(first_of.values()),
    }
    with psycopg.connect(url, autocommit=True) as conn:
        for q in s.questions:
            if not q.in_group:
                continue
            if q.subject not in users:
                uid = add_user(conn, f"eval-{len(users)}@example.com")
                users[q.subject] = (uid, add_topic(conn, uid, q.subject))
            uid, tid = users[q.subject]
            ids[q.key] = _missed(conn, uid, tid, q)
        for name, bank in banks.items():
            uid = add_user(conn, f"eval-learner-{name}@example.com")
            tid = add_topic(conn, uid, "오답 노트")
            keys: dict[int, tuple[int, str]] = {}
            for q in bank:
                keys[_missed(conn, uid, tid, q, explanation=EXPLAINED)] = q.key
            learners[name] = (uid, keys)
    return Loaded(ids, {subject: uid for subject, (uid, _) in users.items()}, learners)


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
    loaded = load(url, s)
    ids, user_of = loaded.ids, loaded.user_of
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

        concept = {q.key: q.concept for q in s.questions}

        def clusters_of(
            learner: str, threshold: float | None, word_weight: float | None = None
        ) -> tuple[list[list], list]:
            """The learner's clusters (question keys) and their names."""
            uid, keys = loaded.learners[learner]
            rows = conn.execute(  # None: the function's own choice (the model's)
                "SELECT cluster, question_id, cluster_name"
                " FROM study_embed.wrong_answer_clusters(%s, 500, %s::real, %s::real)",
                (uid, threshold, word_weight),
            ).fetchall()
            grouped: dict[int, list] = defaultdict(list)
            names: dict[int, str] = {}
            for c, qid, name in rows:
                grouped[c].append(keys[qid])
                names[c] = name
            return list(grouped.values()), [
                {"name": names[c], "size": len(m), "concepts": dict(Counter(concept[k] for k in m))}
                for c, m in grouped.items()
            ]

        # the model's threshold and word weight, else the function's defaults
        cluster_threshold = float(
            one_value(
                conn,
                "SELECT coalesce((SELECT m.cluster_threshold FROM study_embed.model_thresholds m"
                " WHERE m.model = study_embed.served_model()), 0.75)",
            )
        )
        word_weight = float(
            one_value(
                conn,
                "SELECT coalesce((SELECT m.cluster_word_weight FROM study_embed.model_thresholds m"
                " WHERE m.model = study_embed.served_model()), 0)",
            )
        )
        clusters: dict[str, dict] = {}
        for learner in ("all", "concepts"):
            found, names = clusters_of(learner, None)
            clusters[learner] = concept_figures(found, concept) | {
                "threshold": cluster_threshold,
                "word_weight": word_weight,
                "names": names,
                "by_threshold": {
                    str(t): concept_figures(clusters_of(learner, t)[0], concept)
                    for t in CLUSTER_THRESHOLDS
                },
                # the vectors alone (word weight 0), for comparison
                "vectors_alone_by_threshold": {
                    str(t): concept_figures(clusters_of(learner, t, 0.0)[0], concept)
                    for t in CLUSTER_THRESHOLDS
                },
            }

        def contexts(learner: str) -> dict:
            """Each question's explanation context, as the pipeline returns it."""
            uid, keys = loaded.learners[learner]
            return {
                keys[qid]: [
                    (keys[cid], sim)
                    for cid, sim in conn.execute(
                        "SELECT id, similarity FROM study_embed.explanation_context(%s, %s, %s)",
                        (uid, qid, CONTEXT_K),
                    )
                ]
                for qid in keys
            }

        row = conn.execute(
            "SELECT m.context_threshold FROM study_embed.model_thresholds m"
            " WHERE m.model = study_embed.served_model()"
        ).fetchone()
        floor = None if row is None else row[0]  # no row, or a NULL floor: none
        served = {name: contexts(name) for name in ("all", "sparse")}
        # the floors tried: the context without the model's floor, cut in Python
        conn.execute(
            "UPDATE study_embed.model_thresholds SET context_threshold = NULL"
            " WHERE model = study_embed.served_model()"
        )
        unfloored = {name: contexts(name) for name in ("all", "sparse")}
        context = {
            "floor": None if floor is None else float(floor),
            "k": CONTEXT_K,
            "related": context_figures(served["all"], concept, -1.0),
            "unrelated": context_figures(served["sparse"], concept, -1.0),
            "by_floor": {
                str(f): {
                    "related": context_figures(unfloored["all"], concept, f),
                    "unrelated": context_figures(unfloored["sparse"], concept, f),
                }
                for f in CONTEXT_FLOORS
            },
        }

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
        "clusters": clusters,
        "context": context,
    }
