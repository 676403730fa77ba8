"""The evaluation's arithmetic (make eval), on hand-computed cases, and the shape of the set."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from study_embed.sqlfiles import sql_dir
from study_embed_dev.evaluation import (
    adjusted_rand_index,
    best_threshold,
    concept_figures,
    context_figures,
    load_set,
    precision_at_recall,
    prf,
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


def test_adjusted_rand_index_on_hand_computed_cases():
    truth = ["a", "a", "a", "b", "b", "c"]
    assert adjusted_rand_index(truth, [1, 1, 1, 2, 2, 3]) == 1.0  # the names do not matter
    assert adjusted_rand_index(truth, [9, 9, 9, 9, 9, 9]) == 0.0  # one lump: chance
    # all singletons against real groups: 0 agreeing pairs, expected 0: index 0
    assert adjusted_rand_index(truth, [1, 2, 3, 4, 5, 6]) == 0.0
    # a split of a: pairs together in both 1 (a1a2) + 1 (b1b2) = 2; truth 3 + 1 = 4;
    # found 1 + 1 = 2; expected 4 * 2 / 15; max (4 + 2) / 2 = 3
    expected = 4 * 2 / 15
    assert adjusted_rand_index(truth, [1, 1, 2, 3, 3, 4]) == pytest.approx(
        (2 - expected) / (3 - expected)
    )
    with pytest.raises(ValueError):
        adjusted_rand_index(truth, [1])


def test_concept_figures_count_crumbs_of_concepts_with_three_wrong_answers():
    concept = {"c1": "cap", "c2": "cap", "c3": "cap", "s1": "sym", "s2": "sym", "x": "lone"}
    f = concept_figures([["c1", "c2"], ["c3"], ["s1"], ["s2"], ["x"]], concept)
    # cap has 3 questions (one of them alone); sym 2 and lone 1 are not counted
    assert f["singletons"] == pytest.approx(1 / 3)
    assert (f["clusters"], f["concepts"], f["questions"]) == (5, 3, 6)
    assert concept_figures([["c1", "c2", "c3"], ["s1", "s2"], ["x"]], concept)[
        "adjusted_rand_index"
    ] == pytest.approx(1.0)


def test_context_figures_at_a_floor():
    concept = {"q1": "a", "a2": "a", "b1": "b", "q2": "b", "q3": "c"}
    contexts = {
        "q1": [("a2", 0.95), ("b1", 0.85)],
        "q2": [("b1", 0.92)],
        "q3": [("a2", 0.80)],  # nothing related: the nearest is another concept's
    }
    no_floor = context_figures(contexts, concept, -1.0)
    assert no_floor["precision"] == pytest.approx(2 / 4) and no_floor["empty"] == 0.0
    at = context_figures(contexts, concept, 0.9)
    assert at["precision"] == 1.0 and at["empty"] == pytest.approx(1 / 3) and at["rows"] == 2
    assert context_figures(contexts, concept, 0.99) == {
        "floor": 0.99,
        "precision": 1.0,
        "empty": 1.0,
        "rows": 0,
    }


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
    # concepts: at least 20 of at least 6 questions, Korean and English, every question one
    sizes = Counter(q.concept for q in s.questions)
    assert not any(q.concept.startswith("group ") for q in s.questions)
    big = {c for c, n in sizes.items() if n >= 6}
    assert len(big) >= 20
    hangul = {c for c in big if any("가" <= ch <= "힣" for ch in c)}
    assert len(hangul) >= 10 and len(big - hangul) >= 5
    for q in s.questions:
        assert len(set(q.choices)) == 4 and all(q.choices)
