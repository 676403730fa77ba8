"""`make eval` end to end on the deterministic loopback server, where every figure is known:
a rephrasing that is the very same text has cosine 1, different texts are unrelated random
vectors, and a query that is a question's rendered text finds it first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from study_embed_dev.evaluation import adjusted_rand_index

from ..helpers import render

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_make_eval_computes_what_the_pipeline_stored(server, tmp_path):
    groups = []
    for i in range(3):
        base = {"q": f"질문 {i}", "c": ["가", "나", "다", "라"]}
        flip = {"q": f"다른 질문 {i}", "c": ["가", "나", "다", "라"]}
        query = render(base["q"], *base["c"])  # the stored text itself
        groups.append(
            {
                "subject": "한국사",
                "concept": "A" if i < 2 else "B",
                "base": base,
                "same": base | {},
                "flip": flip,
                "query": query,
            }
        )
    concepts = [
        {
            "concept": "C",
            "subject": "English",
            "questions": [{"q": f"concept {j}", "c": ["w", "x", "y", "z"], "a": 2} for j in (1, 2)],
        }
    ]
    # `same` is the same text: load_set refuses nothing, the database takes both rows
    (tmp_path / "set.yaml").write_text(
        json.dumps({"groups": groups, "concepts": concepts}, ensure_ascii=False)
    )
    out = tmp_path / "result.json"
    env = {
        **os.environ,
        "EMBEDDING_API": "tei",
        "EMBEDDING_URL": server.url,
        "EMBEDDING_MODEL": "test-model",
    }
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "eval" / "run.py"),
            "--set",
            str(tmp_path / "set.yaml"),
            "--json",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["pairs"] == {"rephrase": 3, "negative": 6, "same_topic": 2}
    at = res["duplicates_at_configured"]
    assert (at["true_pos"], at["false_pos"], at["false_neg"]) == (3, 0, 0)
    assert at["precision"] == at["recall"] == at["f1"] == 1.0 and at["threshold"] == 0.92
    # the pipeline's own pass records exactly the rephrasings
    run = res["duplicates_pipeline"]
    assert (run["true_pos"], run["false_pos"], run["false_neg"]) == (3, 0, 0)
    assert res["similarity_by_kind"]["rephrase"]["min"] == pytest.approx(1.0)
    assert res["similarity_by_kind"]["negative"]["max"] < 0.5
    assert res["search"] == {"recall_at_1": 1.0, "recall_at_10": 1.0, "mrr": 1.0, "queries": 3}
    # each base clusters with its identical twin, each flip and each concept question alone
    every = res["clusters"]["all"]
    assert (every["questions"], every["concepts"], every["clusters"]) == (11, 3, 8)
    truth = ["A"] * 6 + ["B"] * 3 + ["C"] * 2
    found = [0, 0, 1, 2, 2, 3, 4, 4, 5, 6, 7]  # b0 s0 | f0 | b1 s1 | f1 | b2 s2 | f2 | c1 | c2
    assert every["adjusted_rand_index"] == pytest.approx(adjusted_rand_index(truth, found))
    assert every["singletons"] == pytest.approx(3 / 9)  # the three flips; C has 2 only
    assert res["clusters"]["concepts"]["clusters"] == 2
    # explanation context: no floor for test-model; at 0.9 only the identical twins
    context = res["context"]
    assert context["floor"] is None and context["k"] == 3
    at = context["by_floor"]["0.9"]
    assert at["related"]["precision"] == 1.0 and at["related"]["rows"] == 6
    assert at["unrelated"]["empty"] == 1.0  # one question per concept: nothing related
    assert "make eval: test-model" in r.stdout and "recall@10 1.000" in r.stdout
