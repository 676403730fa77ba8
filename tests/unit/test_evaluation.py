"""The evaluation's arithmetic (make eval), on hand-computed cases, and the shape of the set."""

from __future__ import annotations

from pathlib import Path

import pytest

from study_embed.sqlfiles import sql_dir
from study_embed_dev.evaluation import (
    best_threshold,
    load_set,
    precision_at_recall,
    prf,
    purity,
    reciprocal_rank,
    search_figures,
)

SCORED = [(0.99, True), (0.95, False), (0.93, True), (0.90, False), (0.80, True)]


def test_precision_recall_f1_at_a_threshold():
    r = prf(SCORED, 0.92)  # flags 0.99 (dup), 0.95 (not), 0.93 (dup)
    assert (r.true_pos, r.false_pos, r.false_neg) == (2, 1, 1)
    assert r.precision == pytest.approx(2 / 3) and r.recall == pytest.approx(2 / 3)
    assert r.f1 == pytest.approx(2 / 3)
    nothing = prf(SCORED, 1.5)
    assert (nothing.precision, nothing.recall, nothing.f1) == (1.0, 0.0, 0.0)


def test_best_threshold_and_precision_at_recall():
    best = best_threshold(SCORED)
    assert best.threshold == 0.80 and best.f1 == pytest.approx(2 * 0.6 * 1 / 1.6)
    at = precision_at_recall(SCORED, 0.6)
    assert at is not None and at.threshold == 0.93 and at.precision == pytest.approx(2 / 3)
    assert precision_at_recall([(0.5, False)], 0.8) is not None  # nothing to find: recall 1


def test_ranks():
    assert reciprocal_rank([5, 7, 9], {9}) == pytest.approx(1 / 3)
    assert reciprocal_rank([5, 7], {9}) == 0.0
    f = search_figures([([1, 2], {1}), ([3, 4], {4}), ([5], {6})])
    assert f["recall_at_1"] == pytest.approx(1 / 3)
    assert f["recall_at_10"] == pytest.approx(2 / 3)
    assert f["mrr"] == pytest.approx((1 + 0.5 + 0) / 3)


def test_purity_both_ways():
    label = {"a1": "a", "a2": "a", "b1": "b", "b2": "b"}
    assert purity([["a1", "a2"], ["b1", "b2"]], label) == {
        "purity": 1.0,
        "inverse_purity": 1.0,
        "clusters": 2,
    }
    one = purity([["a1", "a2", "b1", "b2"]], label)
    assert one["purity"] == 0.5 and one["inverse_purity"] == 1.0
    alone = purity([["a1"], ["a2"], ["b1"], ["b2"]], label)
    assert alone["purity"] == 1.0 and alone["inverse_purity"] == 0.5


def test_pairs_follow_from_the_groups(tmp_path):
    f = tmp_path / "set.yaml"
    q = '{q: "%s", c: ["a", "b", "c", "d"]}'
    f.write_text(
        "groups:\n"
        + "".join(
            f'- subject: "{s}"\n  base: {q % (s + str(i))}\n  same: {q % ("s" + s + str(i))}\n'
            f'  flip: {q % ("f" + s + str(i))}\n  query: "x"\n'
            for i, s in enumerate(["A", "A", "B"])
        )
    )
    s = load_set(f)
    kinds = [(p.a, p.b, p.kind) for p in s.pairs]
    assert ((0, "base"), (0, "same"), "rephrase") in kinds
    assert ((0, "base"), (0, "flip"), "negative") in kinds and (
        (0, "same"),
        (0, "flip"),
        "negative",
    ) in kinds
    assert ((0, "base"), (1, "base"), "same_topic") in kinds  # neighbours of one subject
    assert not any(k == "same_topic" and 2 in (a[0], b[0]) for a, b, k in kinds)
    assert [sorted(x.relevant) for x in s.queries][0] == [(0, "base"), (0, "same")]


def test_the_set_is_as_large_and_as_varied_as_promised():
    s = load_set(Path(sql_dir()).parent / "eval" / "set.yaml")
    assert len(s.pairs) >= 300 and len(s.queries) >= 100
    subjects = {q.subject for q in s.questions}
    assert {"한국사", "정보처리기사", "생명과학", "행정법", "영어 어휘", "English"} <= subjects
    texts = [q.text for q in s.questions]
    assert len(set(texts)) == len(texts)  # no question twice
    for q in s.questions:
        assert len(set(q.choices)) == 4 and all(q.choices)
