"""Search over the embeddings: similar questions, free text, duplicates, RAG context, clusters.

Synthetic data with known structure: vectors drawn around chosen centres, so that the right
answers are known before asking.
"""

from __future__ import annotations

import hashlib

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector

from study_embed_dev.rows import vector_index_built_after

from ..conftest import drop_database, fresh_database
from ..helpers import TEST_MODEL, nested_plans, render, vector_for

# one worker builds the module's bulk-loaded database (pytest-xdist --dist loadgroup)
pytestmark = pytest.mark.xdist_group("search_corpus")

DIM = 64
USERS = 150
ROWS_PER_OTHER_USER = 133  # 150 users: 19,817 other rows
TARGET = 1  # user 1 owns 150 rows: 0.75 % of the table
TARGET_ROWS = 150
CENTRES = 40


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def copy_ready_rows(conn, rows) -> None:
    """Load rows that are already embedded (as a restore would), hashes and all."""
    with conn.cursor().copy(
        "COPY study_questions (user_id, study_topic_id, question_text, choice_1, choice_2,"
        " choice_3, choice_4, correct_choice, embedding, embedding_status, embedding_model,"
        " embedding_source_sha256, explanation, embedding_due_at, embedding_queued_at)"
        " FROM STDIN"
    ) as cp:
        for uid, tid, q, vec, expl in rows:
            choices = ("a", "b", "c", "d")
            sha = hashlib.sha256(render(q, *choices).encode()).digest()
            cp.write_row(
                (uid, tid, q, *choices, 1, vec, "ready", TEST_MODEL, sha, expl, None, None)
            )


@pytest.fixture(scope="module")
def corpus():
    """~20k rows, 150 users; user 1 owns 150 of them, spread over the same centres."""
    name = "search_corpus"
    url = fresh_database(name, embedding_dim=DIM)
    rng = np.random.default_rng(7)
    centres = [unit(rng.standard_normal(DIM)) for _ in range(CENTRES)]
    with psycopg.connect(url) as conn:
        register_vector(conn)
        conn.execute(
            "INSERT INTO users (id, email) SELECT g, 'u' || g || '@x'"
            " FROM generate_series(1, %s) g",
            (USERS,),
        )
        conn.execute(
            "INSERT INTO study_topics (id, user_id, name) SELECT g, g, 't' || g"
            " FROM generate_series(1, %s) g",
            (USERS,),
        )
        conn.execute("INSERT INTO study_topics (id, user_id, name) VALUES (1000, 1, 'second')")
        rows, vectors = [], {}
        for uid in range(1, USERS + 1):
            n = TARGET_ROWS if uid == TARGET else ROWS_PER_OTHER_USER
            for i in range(n):
                v = unit(centres[rng.integers(CENTRES)] + 0.35 * rng.standard_normal(DIM))
                q = f"user {uid} question {i}"
                tid = 1000 if uid == TARGET and i % 2 else uid
                expl = "an explanation" if i % 3 == 0 else None
                rows.append((uid, tid, q, v, expl))
                if uid == TARGET:
                    vectors[q] = v
        with vector_index_built_after(conn):  # bulk load as a restore does
            conn.execute("SET session_replication_role = replica")  # triggers off
            copy_ready_rows(conn, rows)
            conn.execute("RESET session_replication_role")
        conn.execute("SELECT study_embed.recount()")
        conn.commit()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE study_questions")
    yield url
    drop_database(name)


@pytest.fixture
def cconn(corpus):
    with psycopg.connect(corpus, autocommit=True) as conn:
        register_vector(conn)
        yield conn


def exact_neighbours(conn, qid: int, k: int, same_topic: bool = False) -> list[int]:
    with conn.transaction():
        conn.execute("SET LOCAL enable_indexscan = off")  # a true exact scan
        return [
            r[0]
            for r in conn.execute(
                "SELECT o.id FROM study_questions o, study_questions s"
                " WHERE s.id = %s AND o.user_id = s.user_id AND o.id <> s.id"
                " AND o.deleted_at IS NULL AND o.embedding IS NOT NULL"
                " AND (NOT %s OR o.study_topic_id = s.study_topic_id)"
                " ORDER BY o.embedding <=> s.embedding, o.id LIMIT %s",
                (qid, same_topic, k),
            )
        ]


def target_ids(conn, n: int = 40) -> list[int]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT id FROM study_questions WHERE user_id = %s ORDER BY id LIMIT %s", (TARGET, n)
        )
    ]


def test_the_target_user_owns_under_one_percent(cconn):
    total, mine = cconn.execute(
        "SELECT count(*), count(*) FILTER (WHERE user_id = %s) FROM study_questions", (TARGET,)
    ).fetchone()
    assert total > 19_000 and mine / total < 0.01


def test_similar_questions_recall_at_10_with_the_user_filter(cconn):
    hits = total = 0
    for qid in target_ids(cconn):
        got = [
            r[0]
            for r in cconn.execute(
                "SELECT id FROM study_embed.similar_questions(%s, %s, 10)", (TARGET, qid)
            )
        ]
        want = exact_neighbours(cconn, qid, 10)
        assert len(got) == 10  # the iterative scan found all k
        hits += len(set(got) & set(want))
        total += len(want)
    recall = hits / total
    print(f"recall@10 with the per-user filter: {recall:.3f}")
    assert recall >= 0.95


def _knn_plan(plans: list[str]) -> str:
    return next(p for p in plans if "nearest AS MATERIALIZED" in p)


def test_similar_questions_never_scan_the_table(corpus, cconn):
    """The planner picks the HNSW index or, for a user this small, the exact per-user path."""
    for qid in target_ids(cconn, 3):
        plan = _knn_plan(
            nested_plans(
                corpus,
                "SELECT * FROM study_embed.similar_questions(%s, %s, 10)",
                (TARGET, qid),
                expect_rows=10,
            )
        )
        assert "Seq Scan on study_questions" not in plan
        assert (
            "Index Scan using study_questions_embedding_hnsw" in plan
            or "Index Cond: (user_id = " in plan
        ), plan


def test_hnsw_with_iterative_scan_serves_a_user_with_under_one_percent(corpus, cconn):
    """Without a per-user index the HNSW index must do it all: it still returns k rows of the
    user, with recall@10 >= 0.95, thanks to the iterative scan (pgvector >= 0.8)."""
    drop = ("DROP INDEX study_questions_user_topic",)  # rolled back afterwards
    hits = total = 0
    for qid in target_ids(cconn, 20):
        plans = nested_plans(
            corpus,
            "SELECT id FROM study_embed.similar_questions(%s, %s, 10)",
            (TARGET, qid),
            expect_rows=10,
            setup=drop,
        )
        plan = _knn_plan(plans)
        assert "Index Scan using study_questions_embedding_hnsw on study_questions" in plan, plan
        got = [int(x) for x in _similar_ids(corpus, qid, drop)]
        want = exact_neighbours(cconn, qid, 10)
        hits += len(set(got) & set(want))
        total += len(want)
    recall = hits / total
    print(f"recall@10, HNSW only, per-user filter: {recall:.3f}")
    assert recall >= 0.95


def _similar_ids(url: str, qid: int, setup: tuple[str, ...]) -> list[int]:
    with psycopg.connect(url) as c:
        with c.transaction(force_rollback=True):
            for stmt in setup:
                c.execute(stmt)
            return [
                r[0]
                for r in c.execute(
                    "SELECT id FROM study_embed.similar_questions(%s, %s, 10)", (TARGET, qid)
                )
            ]


def test_same_topic_and_never_another_users_question(cconn):
    for qid in target_ids(cconn, 10):
        rows = cconn.execute(
            "SELECT s.id, q.user_id, q.study_topic_id, src.study_topic_id"
            " FROM study_embed.similar_questions(%s, %s, 20, true) s"
            " JOIN study_questions q ON q.id = s.id JOIN study_questions src ON src.id = %s",
            (TARGET, qid, qid),
        ).fetchall()
        assert len(rows) == 20
        assert {r[1] for r in rows} == {TARGET}
        assert all(r[2] == r[3] for r in rows)
        assert qid not in {r[0] for r in rows}
        exact = set(exact_neighbours(cconn, qid, 20, same_topic=True))
        assert len({r[0] for r in rows} & exact) >= 18


def test_search_by_vector_is_per_user(cconn):
    """The same query vector, asked for two users, returns only each user's own rows."""
    q = cconn.execute("SELECT embedding FROM study_questions WHERE user_id = 2 LIMIT 1").fetchone()[
        0
    ]
    for uid in (TARGET, 2, 3):
        owners = {
            r[0]
            for r in cconn.execute(
                "SELECT q.user_id FROM study_embed.search_questions(%s, %s, 25) s"
                " JOIN study_questions q ON q.id = s.id",
                (uid, q),
            )
        }
        assert owners == {uid}
    assert (
        cconn.execute(
            "SELECT count(*) FROM study_embed.search_questions(999999, %s, 5)", (q,)
        ).fetchone()[0]
        == 0
    )


def test_planted_neighbours_come_back_in_order(bank, db):
    """In the 1024-dim schema, through the pipeline: neighbours at growing distances."""
    rng = np.random.default_rng(3)
    src = unit(rng.standard_normal(1024))
    noise = [unit(rng.standard_normal(1024)) for _ in range(5)]
    planted = [unit(src + eps * n) for eps, n in zip((0.1, 0.3, 0.6, 1.0, 1.5), noise, strict=True)]
    ids = [bank.insert(f"planted {i}") for i in range(6)]
    for _ in range(30):  # unrelated questions of the user
        ids.append(bank.insert())
    other_user = bank.new_user()
    foreign = bank.insert("foreign copy", user=other_user)  # another user's exact copy
    vectors = {ids[0]: src, **{ids[i + 1]: planted[i] for i in range(5)}, foreign: src}
    claimed = bank.claim(100)
    bank.complete(
        claimed, vectors=[vectors.get(c.id, unit(rng.standard_normal(1024))) for c in claimed]
    )
    got = db.execute(
        "SELECT id, similarity FROM study_embed.similar_questions(%s, %s, 5)",
        (bank.user_id, ids[0]),
    ).fetchall()
    assert [r[0] for r in got] == ids[1:6]
    sims = [r[1] for r in got]
    assert sims == sorted(sims, reverse=True) and sims[0] > 0.99
    # deleted rows never appear
    db.execute("UPDATE study_questions SET deleted_at = now() WHERE id = %s", (ids[1],))
    got = [
        r[0]
        for r in db.execute(
            "SELECT id FROM study_embed.similar_questions(%s, %s, 5)", (bank.user_id, ids[0])
        )
    ]
    assert ids[1] not in got and got[:4] == ids[2:6] and foreign not in got
    # a question without an embedding yet has no similar questions (not an error)
    assert (
        db.execute(
            "SELECT count(*) FROM study_embed.similar_questions(%s, %s)",
            (bank.user_id, bank.insert()),
        ).fetchone()[0]
        == 0
    )


def _embed_all(bank, vectors: dict[int, np.ndarray]) -> None:
    """Embed through the queue API, then run the near-duplicate pass (tick() or a listener
    would)."""
    claimed = bank.claim(1000)
    bank.complete(claimed, vectors=[vectors[c.id] for c in claimed])
    assert bank.conn.execute("SELECT study_embed.detect_duplicates()").fetchone()[0] == len(claimed)


def test_complete_queues_rows_for_the_duplicate_pass(bank, db):
    a, b = bank.insert("one", ("x", "y", "z", "w")), bank.insert("two", ("x", "y", "z", "w"))
    bank.complete(bank.claim(), vectors=[vector_for("same")] * 2)
    assert db.execute("SELECT count(*) FROM study_embed.duplicate_pairs").fetchone()[0] == 0
    queued = db.execute("SELECT question_ids FROM study_embed.duplicate_queue").fetchall()
    assert [sorted(ids) for (ids,) in queued] == [sorted([a, b])]  # one row for the call
    assert db.execute("SELECT study_embed.tick()").fetchone() is not None  # runs the pass
    assert db.execute(
        "SELECT question_id, duplicate_of FROM study_embed.duplicate_pairs"
    ).fetchall() == [(a, b)]
    assert db.execute("SELECT count(*) FROM study_embed.duplicate_queue").fetchone()[0] == 0


def test_the_pass_takes_the_queue_in_chunks_and_each_question_once(bank, db):
    """A queue row holds a complete() call's ids: the pass cuts a row larger than its chunk and
    examines a question queued by two calls once."""
    choices = ("x", "y", "z", "w")
    ids = [bank.insert(f"q{i}", choices) for i in range(5)]
    bank.complete(bank.claim(), vectors=[vector_for(f"v{i}") for i in range(5)])
    db.execute(
        "INSERT INTO study_embed.duplicate_queue (question_ids) VALUES (%s)", ([ids[0], ids[1]],)
    )
    rows = db.execute("SELECT question_ids FROM study_embed.duplicate_queue ORDER BY id")
    assert [len(r[0]) for r in rows] == [5, 2]
    # chunks of 2: [0, 1], [2, 3], [4] + [0] from the second row, then [1]
    examined = db.execute("SELECT study_embed.detect_duplicates(chunk => 2)").fetchone()[0]
    assert examined == 7  # 5 + the two queued again (a later pass sees them again)
    assert db.execute("SELECT count(*) FROM study_embed.duplicate_queue").fetchone()[0] == 0
    db.execute(
        "INSERT INTO study_embed.duplicate_queue (question_ids) VALUES (%s), (%s)",
        ([ids[0]], [ids[0], ids[1]]),
    )
    assert db.execute("SELECT study_embed.detect_duplicates()").fetchone()[0] == 2
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        db.execute("SELECT study_embed.detect_duplicates(chunk => 0)")


def test_duplicates_are_recorded_for_near_copies_only(bank, db):
    rng = np.random.default_rng(11)
    base = unit(rng.standard_normal(1024))
    paris = ("Paris", "Lyon", "Nice", "Lille")
    original = bank.insert("What is the capital of France?", paris)
    copy = bank.insert("What's the capital city of France?", paris[::-1], correct=4)
    unrelated = bank.insert("Solve 2x + 3 = 7.")
    other_user = bank.new_user()
    foreign = bank.insert("What is the capital of France?", user=other_user)
    _embed_all(
        bank,
        {
            original: base,
            copy: unit(base + 0.05 * rng.standard_normal(1024) / 32),
            unrelated: unit(rng.standard_normal(1024)),
            foreign: base,
        },
    )
    pairs = db.execute(
        "SELECT question_id, duplicate_of, user_id, similarity, question_text,"
        " duplicate_text FROM study_embed.duplicate_pairs"
    ).fetchall()
    assert [(p[0], p[1], p[2]) for p in pairs] == [(original, copy, bank.user_id)]
    assert pairs[0][3] > 0.99 and "capital of France" in pairs[0][4]
    # a content edit takes the pair away until the new embedding says otherwise
    bank.update(copy, question_text="Name the largest desert.")
    _embed_all(bank, {copy: unit(rng.standard_normal(1024))})
    assert db.execute("SELECT count(*) FROM study_embed.duplicate_pairs").fetchone()[0] == 0


def test_check_before_insert_finds_candidates(bank, db):
    rng = np.random.default_rng(5)
    base = unit(rng.standard_normal(1024))
    qid = bank.insert("원래 문제")
    _embed_all(bank, {qid: base})
    near = unit(base + 0.01 * rng.standard_normal(1024))
    found = db.execute(
        "SELECT id, similarity FROM study_embed.find_duplicates(%s, %s)", (bank.user_id, near)
    ).fetchall()
    assert [f[0] for f in found] == [qid] and found[0][1] > 0.92
    far = unit(rng.standard_normal(1024))
    assert (
        db.execute(
            "SELECT count(*) FROM study_embed.find_duplicates(%s, %s)", (bank.user_id, far)
        ).fetchone()[0]
        == 0
    )
    other = bank.new_user()[0]
    assert (
        db.execute(
            "SELECT count(*) FROM study_embed.find_duplicates(%s, %s)", (other, near)
        ).fetchone()[0]
        == 0
    )


def test_explanation_context_returns_explained_neighbours_with_texts(bank, db):
    rng = np.random.default_rng(9)
    base = unit(rng.standard_normal(1024))
    src = bank.insert("source")
    explained = bank.insert("explained", ("w", "x", "y", "z"), correct=3, explanation="because y")
    ai = bank.insert("ai explained", ai_explanation="AI says", ai_explanation_status="ready")
    ai_pending = bank.insert("ai pending", ai_explanation="draft", ai_explanation_status="pending")
    bare = bank.insert("no explanation")
    other_user = bank.new_user()
    foreign = bank.insert("foreign", explanation="not yours", user=other_user)
    vec = {
        q: unit(base + 0.2 * rng.standard_normal(1024) / 32)
        for q in (explained, ai, ai_pending, bare, foreign)
    }
    _embed_all(bank, {src: base, **vec})
    rows = db.execute(
        "SELECT id, question_text, correct_answer, explanation, ai_explanation"
        " FROM study_embed.explanation_context(%s, %s, 5)",
        (bank.user_id, src),
    ).fetchall()
    assert {r[0] for r in rows} == {explained, ai}
    by_id = {r[0]: r for r in rows}
    assert by_id[explained][1] == render("explained", "w", "x", "y", "z")
    assert by_id[explained][2:4] == ("y", "because y")
    assert by_id[ai][4] == "AI says"


def test_explanation_context_is_empty_below_the_models_relevance_floor(bank, db):
    """A question with nothing related gets no context rather than the nearest unrelated
    one: the served model's context_threshold cuts it (no row for the model: no floor)."""
    rng = np.random.default_rng(11)
    base = unit(rng.standard_normal(1024))
    src = bank.insert("광합성이 일어나는 세포 소기관은?")
    related = bank.insert("식물 세포에서 광합성을 담당하는 소기관은?", explanation="엽록체")
    unrelated = bank.insert("훈민정음을 창제한 왕은?", explanation="세종")
    near = unit(base + 0.3 * rng.standard_normal(1024) / 32)
    far = unit(base + 1.2 * rng.standard_normal(1024) / 32)
    assert float(base @ far) < 0.8 < 0.9 < float(base @ near)
    _embed_all(bank, {src: base, related: near, unrelated: far})  # embedded by 'test-model'

    def context() -> list[int]:
        return [
            r[0]
            for r in db.execute(
                "SELECT id FROM study_embed.explanation_context(%s, %s, 5)", (bank.user_id, src)
            )
        ]

    assert context() == [related, unrelated]  # no row for the model: no floor
    db.execute(
        "INSERT INTO study_embed.model_thresholds (model, duplicate_threshold, context_threshold,"
        " chosen_by) VALUES ('test-model', 0.99, 0.8, 'a test')"
    )
    assert context() == [related]
    db.execute("UPDATE study_questions SET deleted_at = now() WHERE id = %s", (related,))
    assert context() == []  # the nearest left is unrelated: nothing


def test_wrong_answer_clusters_recover_planted_groups(bank, db):
    rng = np.random.default_rng(21)
    centres = [unit(rng.standard_normal(1024)) for _ in range(3)]
    groups = {g: [bank.insert(f"group {g} item {i}") for i in range(4)] for g in range(3)}
    loner = bank.insert("a loner")
    right = bank.insert("answered right")
    vectors = {
        q: unit(centres[g] + 0.15 * rng.standard_normal(1024) / 32)
        for g, qs in groups.items()
        for q in qs
    }
    vectors[loner] = unit(rng.standard_normal(1024))
    vectors[right] = unit(centres[0] + 0.15 * rng.standard_normal(1024) / 32)
    other_user = bank.new_user()
    foreign = bank.insert("foreign", user=other_user)
    vectors[foreign] = centres[0]
    _embed_all(bank, vectors)

    def attempt(qid, selected, user=(bank.user_id, bank.topic_id), correct=1):
        db.execute(
            "INSERT INTO study_question_attempts (user_id, study_question_id,"
            " study_topic_id, selected_choice, correct_choice, is_correct)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (user[0], qid, user[1], selected, correct, selected == correct),
        )

    for q in [*vectors]:
        if q not in (right, foreign):
            attempt(q, 2)  # wrong
    attempt(right, 2)
    attempt(right, 1)  # latest attempt right: not a weak spot
    attempt(foreign, 2, user=other_user)
    rows = db.execute(
        "SELECT cluster, representative_id, question_id, similarity"
        " FROM study_embed.wrong_answer_clusters(%s)",
        (bank.user_id,),
    ).fetchall()
    clusters: dict[int, set[int]] = {}
    for cluster, rep, qid, sim in rows:
        clusters.setdefault(cluster, set()).add(qid)
        assert sim >= 0.75 or qid == rep
    assert sorted(map(sorted, clusters.values())) == sorted(
        [sorted(groups[0]), sorted(groups[1]), sorted(groups[2]), [loner]]
    )
    assert foreign not in {r[2] for r in rows} and right not in {r[2] for r in rows}
    # deleted questions drop out
    db.execute("UPDATE study_questions SET deleted_at = now() WHERE id = %s", (groups[0][0],))
    ids = {
        r[0]
        for r in db.execute(
            "SELECT question_id FROM study_embed.wrong_answer_clusters(%s)", (bank.user_id,)
        )
    }
    assert groups[0][0] not in ids and len(ids) == 12


def test_search_functions_reject_missing_user(bank, db):
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        db.execute("SELECT * FROM study_embed.search_questions(NULL, %s)", (vector_for("x"),))
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        db.execute("SELECT * FROM study_embed.wrong_answer_clusters(NULL)")
    for weight in (-0.1, 1.0):
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="word_weight"):
            db.execute(
                "SELECT * FROM study_embed.wrong_answer_clusters(%s, 50, 0.8, %s::real)",
                (bank.user_id, weight),
            )


# -- the command line ------------------------------------------------------------------------------


def _cli(*args, env):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "study_embed.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_search_and_check_duplicate_commands(bank, db, db_url):
    import os

    from study_embed_dev.embed_server import EmbedServer

    server = EmbedServer(dim=1024)
    try:
        env = {
            **os.environ,
            "DATABASE_URL": db_url,
            "EMBEDDING_URL": server.url,
            "EMBEDDING_MODEL": TEST_MODEL,
        }
        target = bank.insert(
            "광합성은 어디에서 일어나는가?", ("엽록체", "미토콘드리아", "핵", "리보솜")
        )
        bank.insert("Which planet is largest?", ("Mars", "Jupiter", "Venus", "Earth"))
        other = bank.new_user()
        foreign = bank.insert(
            "광합성은 어디에서 일어나는가?", ("엽록체", "미토콘드리아", "핵", "리보솜"), user=other
        )
        assert _cli("drain", env=env).returncode == 0
        assert bank.claim() == []  # everything is embedded
        r = _cli(
            "check-duplicate",
            "--user",
            str(bank.user_id),
            "--question",
            "광합성은 어디에서 일어나는가?",
            "--choices",
            "엽록체",
            "미토콘드리아",
            "핵",
            "리보솜",
            env=env,
        )
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[1].split()[:2] == ["1.000", str(target)] and len(lines) == 2
        assert str(foreign) not in r.stdout
        r = _cli(
            "check-duplicate",
            "--user",
            str(bank.user_id),
            "--question",
            "new",
            "--choices",
            "a",
            "b",
            "c",
            "d",
            env=env,
        )
        assert r.returncode == 0 and "no near-duplicates" in r.stdout
        r = _cli("search", "--user", str(other[0]), "anything", "-k", "5", env=env)
        assert r.returncode == 0, r.stderr
        ids = [int(ln.split()[1]) for ln in r.stdout.splitlines()[1:]]
        assert ids == [foreign]
    finally:
        server.stop()


def _average_linkage(
    vecs: np.ndarray, threshold: float, subjects=None, normalize: bool = True
) -> list[int]:
    """The documented method, written out plainly: each question's group (its root's index).
    A pair's similarity is the product of its rows (made unit vectors first, unless told)."""
    n = len(vecs)
    unit_ = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True) if normalize else vecs).astype(
        np.float32
    )
    sims = unit_ @ unit_.T
    subjects = subjects or [None] * n
    close = sorted(
        (-float(sims[i, j]), i, j)
        for i in range(n)
        for j in range(i + 1, n)
        if sims[i, j] >= threshold
        and (subjects[i] is None or subjects[j] is None or subjects[i] == subjects[j])
    )
    root, size, total = list(range(n)), [1] * n, [u.astype(np.float64) for u in unit_]

    def find(x: int) -> int:
        while root[x] != x:
            x = root[x]
        return x

    for _ in range(3):
        joined = 0
        for _, i, j in close:
            a, b = find(i), find(j)
            if a == b or total[a] @ total[b] < threshold * size[a] * size[b]:
                continue
            if size[a] < size[b]:
                a, b = b, a
            root[b], size[a], total[a] = a, size[a] + size[b], total[a] + total[b]
            joined += 1
        if not joined:
            break
    return [find(i) for i in range(n)]


def _wrong(db, bank, ids: list[int]) -> None:
    """Every question answered wrongly, the first of `ids` most recently."""
    for k, qid in enumerate(ids):
        db.execute(
            "INSERT INTO study_question_attempts (user_id, study_question_id,"
            " study_topic_id, selected_choice, correct_choice, is_correct, answered_at)"
            " VALUES (%s, %s, %s, 2, 1, false, now() - make_interval(secs => %s))",
            (bank.user_id, qid, bank.topic_id, k + 1),
        )


def test_wrong_answer_clusters_follow_the_documented_average_linkage(bank, db):
    """Overlapping groups (questions between two centres, chains that must not merge) and
    vectors of any length: the SQL groups exactly as the plain method does, each member's
    similarity is to the member closest to its group's mean, biggest group first."""
    rng = np.random.default_rng(5)
    centres = [unit(rng.standard_normal(64)) for _ in range(6)]
    ids, vecs = [], []
    for i in range(80):
        g = i % 6
        mix = centres[g] + (0.9 * centres[(g + 1) % 6] if i % 5 == 0 else 0)
        v = np.pad(mix + 0.05 * rng.standard_normal(64), (0, 1024 - 64))
        ids.append(bank.insert(f"q{i}"))
        vecs.append(v * (1 + 3 * rng.random()))  # a server need not send unit vectors
    _embed_all(bank, dict(zip(ids, vecs, strict=True)))
    _wrong(db, bank, ids)
    roots = _average_linkage(np.array(vecs), 0.75)
    want: dict[int, set[int]] = {}
    for qid, r in zip(ids, roots, strict=True):
        want.setdefault(r, set()).add(qid)
    got_rows = db.execute(
        "SELECT cluster, representative_id, question_id, similarity"
        " FROM study_embed.wrong_answer_clusters(%s, 80, 0.75)",
        (bank.user_id,),
    ).fetchall()
    got: dict[int, set[int]] = {}
    for c, _, qid, _ in got_rows:
        got.setdefault(c, set()).add(qid)
    assert 6 <= len(want) < len(ids) - 10  # real clusters, not singletons
    assert sorted(map(sorted, got.values())) == sorted(map(sorted, want.values()))
    assert [len(got[c]) for c in sorted(got)] == sorted(map(len, want.values()), reverse=True)
    vec = {qid: unit(v) for qid, v in zip(ids, vecs, strict=True)}
    for c, members in got.items():
        total = sum(vec[q] for q in members)
        rep = max(sorted(members, key=ids.index), key=lambda q: float(vec[q] @ total))
        for cluster, representative, qid, sim in got_rows:
            if cluster == c:
                assert representative == rep
                assert sim == pytest.approx(float(vec[qid] @ vec[rep]), abs=1e-5)


def _word_bags(db, texts: list[str]) -> np.ndarray:
    """The documented word vector of each text (words that _cluster_word keeps as they are):
    its distinct words, each in the bucket _word_bucket() hashes it to, as a unit vector."""
    bags = np.zeros((len(texts), 1024))
    for k, text in enumerate(texts):
        for word in set(text.lower().split()):
            [(bucket,)] = db.execute("SELECT study_embed._word_bucket(%s)", (word,)).fetchall()
            bags[k, bucket - 1] = 1.0
        bags[k] /= np.linalg.norm(bags[k])
    return bags


def test_clusters_weigh_the_words_questions_share_as_documented(bank, db):
    """Three concepts whose vectors are all about equally close (the vectors alone make one
    cluster of them) but whose questions and choices share their concept's words: at a word
    weight, a pair's similarity is (1 - w) x cosine + w x the cosine of their word sets, and
    the SQL groups exactly as the plain method does on those similarities, by concept; the
    served model's weight is the default."""
    rng = np.random.default_rng(8)
    base = unit(rng.standard_normal(1024))
    concepts = [["alpha", "bravo", "charlie"], ["delta", "echo", "foxtrot"], ["golf", "hotel"]]
    common = ["india", "juliet", "kilo", "lima", "mike", "november"]
    ids, vecs, texts, concept_of = [], [], [], {}
    for i in range(30):
        own = concepts[i % 3]
        question = " ".join([*rng.choice(own, 2, replace=False), *rng.choice(common, 2)])
        choices = tuple(f"{rng.choice(own)} {rng.choice(common)}" for _ in range(4))
        qid = bank.insert(question, choices)
        ids.append(qid)
        concept_of[qid] = i % 3
        vecs.append(base + 0.5 * rng.standard_normal(1024) / 32)  # about 0.8 to any other
        texts.append(" ".join([question, *choices]))
    _embed_all(bank, dict(zip(ids, vecs, strict=True)))
    _wrong(db, bank, ids)

    def groups(sql: str, *args) -> list[list[int]]:
        got: dict[int, list[int]] = {}
        for c, qid in db.execute(sql, (bank.user_id, *args)):
            got.setdefault(c, []).append(qid)
        return sorted(sorted(g) for g in got.values())

    def expected(roots: list[int]) -> list[list[int]]:
        want: dict[int, list[int]] = {}
        for qid, r in zip(ids, roots, strict=True):
            want.setdefault(r, []).append(qid)
        return sorted(sorted(g) for g in want.values())

    w, threshold = 0.3, 0.7
    units = np.array([unit(v) for v in vecs])
    combined = np.hstack([np.sqrt(1 - w) * units, np.sqrt(w) * _word_bags(db, texts)])
    with_words = groups(
        "SELECT cluster, question_id"
        " FROM study_embed.wrong_answer_clusters(%s, 50, %s::real, %s::real)",
        threshold,
        w,
    )
    assert with_words == expected(_average_linkage(combined, threshold, normalize=False))
    by_concept = [sorted(q for q in ids if concept_of[q] == k) for k in range(3)]
    assert with_words == sorted(by_concept)
    alone = groups(
        "SELECT cluster, question_id FROM study_embed.wrong_answer_clusters(%s, 50, %s::real, 0)",
        threshold,
    )
    assert alone == [sorted(ids)] == expected(_average_linkage(np.array(vecs), threshold))
    # the served model's threshold and weight, when none are given
    db.execute(
        "INSERT INTO study_embed.model_thresholds (model, duplicate_threshold,"
        " cluster_threshold, cluster_word_weight, chosen_by)"
        " VALUES (%s, 0.92, %s, %s, 'a test')",
        (TEST_MODEL, threshold, w),
    )
    default = "SELECT cluster, question_id FROM study_embed.wrong_answer_clusters(%s)"
    assert groups(default) == with_words
    db.execute("UPDATE study_embed.model_thresholds SET cluster_word_weight = 0")
    assert groups(default) == alone


def test_a_chain_of_close_questions_is_not_one_cluster(bank, db):
    """Four questions on an arc, each at 0.85 from the next, the ends far apart: threshold
    linkage would chain them into one weak spot; the average over all pairs keeps two."""
    step = np.arccos(0.85)
    rng = np.random.default_rng(3)
    x, y = unit(rng.standard_normal(1024)), rng.standard_normal(1024)
    y = unit(y - (y @ x) * x)
    ids = [bank.insert(f"arc {k}") for k in range(4)]
    _embed_all(bank, {q: np.cos(k * step) * x + np.sin(k * step) * y for k, q in enumerate(ids)})
    _wrong(db, bank, ids)
    rows = db.execute(
        "SELECT cluster, question_id FROM study_embed.wrong_answer_clusters(%s, 50, 0.75)",
        (bank.user_id,),
    ).fetchall()
    groups: dict[int, set[int]] = {}
    for c, qid in rows:
        groups.setdefault(c, set()).add(qid)
    assert sorted(map(sorted, groups.values())) == [sorted(ids[:2]), sorted(ids[2:])]


def test_clusters_keep_subjects_apart_and_are_named(bank, db):
    """Two subjects never share a cluster (a question without one may join either); a
    cluster is named by its common scope, else its subject and the words half of its members
    use; a question alone by its text (its first 60 characters)."""
    rng = np.random.default_rng(17)
    capital, symbol = unit(rng.standard_normal(1024)), unit(rng.standard_normal(1024))
    near = lambda c: unit(c + 0.1 * rng.standard_normal(1024) / 32)
    capitals = [
        bank.insert(q, subject="사회")
        for q in ("프랑스의 수도는?", "캐나다의 수도는 어디인가?", "브라질의 수도로 옳은 것은?")
    ]
    english = bank.insert("What is the capital of France?", subject="English")
    symbols = [
        bank.insert(q, subject="화학", scope="원소 기호")
        for q in ("나트륨의 원소 기호는?", "칼륨을 나타내는 기호는?")
    ]
    long_text = "광합성이 일어나는 세포 소기관은 무엇인가? " * 3
    alone = bank.insert(long_text)
    vectors = {q: near(capital) for q in [*capitals, english]}
    vectors |= {q: near(symbol) for q in symbols}
    vectors[alone] = unit(rng.standard_normal(1024))
    _embed_all(bank, vectors)
    _wrong(db, bank, [*capitals, english, *symbols, alone])
    rows = db.execute(
        "SELECT cluster, question_id, cluster_name"
        " FROM study_embed.wrong_answer_clusters(%s, 50, 0.9)",
        (bank.user_id,),
    ).fetchall()
    groups: dict[str, set[int]] = {}
    for _, qid, name in rows:
        groups.setdefault(name, set()).add(qid)
    assert groups == {
        "사회: 수도": set(capitals),
        "원소 기호": set(symbols),
        "What is the capital of France?": {english},
        long_text[:60]: {alone},
    }
    assert [r[0] for r in rows] == sorted(r[0] for r in rows) and rows[0][1] in capitals
    # without subjects, the English question joins the capitals
    db.execute("UPDATE study_questions SET subject = NULL WHERE id = %s", (english,))
    names = {
        qid: name
        for _, qid, name in db.execute(
            "SELECT cluster, question_id, cluster_name"
            " FROM study_embed.wrong_answer_clusters(%s, 50, 0.9)",
            (bank.user_id,),
        )
    }
    assert names[english] == names[capitals[0]] != "사회: 수도"


def test_a_question_one_word_away_with_another_answer_is_not_a_duplicate(bank, db):
    """낮추는/높이는: the same choices, vectors as close as a rephrasing's, another correct
    choice.  The same-answer check keeps the pair out; switched off, it is recorded."""
    rng = np.random.default_rng(5)
    base = unit(rng.standard_normal(1024))
    hormones = ("글루카곤", "인슐린", "아드레날린", "티록신")
    lower = bank.insert("혈당량을 낮추는 호르몬은?", hormones, correct=2)
    same = bank.insert("혈액 속 포도당 농도를 떨어뜨리는 호르몬은?", hormones[::-1], correct=3)
    higher = bank.insert("혈당량을 높이는 호르몬은?", hormones, correct=1)
    near = {q: unit(base + 0.01 * rng.standard_normal(1024) / 32) for q in (lower, same, higher)}
    _embed_all(bank, near)
    pairs = db.execute(
        "SELECT question_id, duplicate_of FROM study_embed.duplicate_pairs"
    ).fetchall()
    assert pairs == [(lower, same)]  # 인슐린 both; 글루카곤 is another answer
    # the pre-insert check with the new question's answer says the same
    hits = {
        r[0]
        for r in db.execute(
            "SELECT id FROM study_embed.find_duplicates(%s, %s, NULL, %s)",
            (bank.user_id, near[higher], " 글루카곤 "),
        )
    }
    assert hits == {higher}
    assert (
        len(
            db.execute(
                "SELECT id FROM study_embed.find_duplicates(%s, %s)", (bank.user_id, near[higher])
            ).fetchall()
        )
        == 3
    )  # no answer given
    db.execute("UPDATE study_embed.settings SET duplicate_same_answer = false")
    db.execute("UPDATE study_embed.duplicate_candidates SET dismissed_at = NULL")
    bank.conn.execute(
        "INSERT INTO study_embed.duplicate_queue (question_ids) VALUES (ARRAY[%s])", (higher,)
    )
    db.execute("SELECT study_embed.detect_duplicates()")
    assert db.execute("SELECT count(*) FROM study_embed.duplicate_pairs").fetchone()[0] == 3


def test_a_models_own_threshold_overrides_the_setting(bank, db):
    rng = np.random.default_rng(6)
    base = unit(rng.standard_normal(1024))
    choices = ("a", "b", "c", "d")
    a, b = bank.insert("first", choices), bank.insert("second", choices)
    close = unit(base + 0.3 * rng.standard_normal(1024) / 32)  # cosine about 0.96
    sim = float(base @ close)
    assert 0.92 < sim < 0.99
    db.execute(
        "INSERT INTO study_embed.model_thresholds (model, duplicate_threshold, chosen_by)"
        " VALUES ('test-model', 0.99, 'a test')"
    )
    _embed_all(bank, {a: base, b: close})  # embedded by 'test-model'
    assert db.execute("SELECT count(*) FROM study_embed.duplicate_pairs").fetchone()[0] == 0
    assert (
        db.execute(
            "SELECT count(*) FROM study_embed.find_duplicates(%s, %s)", (bank.user_id, base)
        ).fetchone()[0]
        == 1
    )  # itself only
    db.execute(
        "UPDATE study_embed.model_thresholds SET duplicate_threshold = 0.95"
        " WHERE model = 'test-model'"
    )
    bank.conn.execute(
        "INSERT INTO study_embed.duplicate_queue (question_ids) VALUES (ARRAY[%s])", (a,)
    )
    db.execute("SELECT study_embed.detect_duplicates()")
    assert db.execute("SELECT count(*) FROM study_embed.duplicate_pairs").fetchone()[0] == 1


def test_hybrid_search_keeps_an_exact_term_that_the_vector_misses(bank, db):
    """The query's vector is closest to another question; its words name 1876 and 강화도.
    Fused with the lexical ranking, the question holding those words comes first; another
    user's copy never appears; no query text breaks the query."""
    years = ("1866년", "1871년", "1876년", "1882년")
    treaty = bank.insert("강화도 조약이 체결된 해는?", years, correct=3)
    other_q = bank.insert("신미양요가 일어난 해는?", years, correct=2)
    foreign = bank.insert("강화도 조약이 체결된 해는?", years, user=bank.new_user())
    rng = np.random.default_rng(8)
    vec = {q: unit(rng.standard_normal(1024)) for q in (treaty, other_q, foreign)}
    _embed_all(bank, vec)
    query = unit(vec[other_q] + 0.2 * vec[treaty])  # dense: other_q, then treaty

    def ids(fn: str, text: str | None = None) -> list[int]:
        if text is None:
            rows = db.execute(f"SELECT id FROM study_embed.{fn}(%s, %s, 10)", (bank.user_id, query))
        else:
            rows = db.execute(
                f"SELECT id FROM study_embed.{fn}(%s, %s, %s, 10)", (bank.user_id, query, text)
            )
        return [r[0] for r in rows]

    assert ids("search_questions") == [other_q, treaty]
    assert ids("search_questions_hybrid", "강화도 조약 1876") == [treaty, other_q]
    assert ids("search_questions_hybrid", "") == [other_q, treaty]  # no words: dense order
    for hostile in ("a' | !b & (c", "':* <-> \\", "!!!", "강화도' OR 1=1 --"):
        assert foreign not in ids("search_questions_hybrid", hostile)


def test_clusters_take_the_models_threshold_when_none_is_given(bank, db):
    """e5 scores unrelated questions about 0.86: its cluster threshold is its own.  Two
    questions at cosine ~0.9 cluster at the function's 0.75, not at the model's 0.95."""
    rng = np.random.default_rng(9)
    base = unit(rng.standard_normal(1024))
    a, b = bank.insert("first"), bank.insert("second")
    close = unit(base + 0.45 * rng.standard_normal(1024) / 32)
    assert 0.75 < float(base @ close) < 0.95
    _embed_all(bank, {a: base, b: close})  # embedded by 'test-model'
    for q in (a, b):
        db.execute(
            "INSERT INTO study_question_attempts (user_id, study_question_id, study_topic_id,"
            " selected_choice, correct_choice, is_correct) VALUES (%s, %s, %s, 2, 1, false)",
            (bank.user_id, q, bank.topic_id),
        )

    def clusters(
        sql: str = "SELECT count(DISTINCT cluster) FROM study_embed.wrong_answer_clusters(%s)",
    ) -> int:
        return db.execute(sql, (bank.user_id,)).fetchone()[0]

    assert clusters() == 1  # no row for the model: 0.75
    db.execute(
        "INSERT INTO study_embed.model_thresholds (model, duplicate_threshold,"
        " cluster_threshold, chosen_by) VALUES ('test-model', 0.92, 0.95, 'a test')"
    )
    assert clusters() == 2
    assert (
        clusters(
            "SELECT count(DISTINCT cluster) FROM study_embed.wrong_answer_clusters(%s, 50, 0.75)"
        )
        == 1
    )  # given: used
