"""The UI's pages, in process (Starlette's TestClient), connected as the UI's role: a login with
study_embed_app and SELECT on the app's tables, never the owner.  The questions are written as an
app would (the `bank` fixture) and embedded through the queue API with the loopback server's
vectors (`bigram_vector`: texts that share words are close)."""

from __future__ import annotations

import re

import psycopg
import pytest
from psycopg import sql
from starlette.testclient import TestClient

from study_embed.settings import Settings
from study_embed.ui.app import Refused, create_app
from study_embed_dev.vectors import bigram_vector

from ..conftest import url_for
from ..helpers import KOREAN, korean_bank, question_links, wait_until

UI_ROLE = "se_ui_reader"
PHOTO, KING, KING_AGAIN, OTHERS = (
    KOREAN[k][:2] for k in ("photo", "king", "king_again", "b_secret")
)


def reader_url(login, name: str, *groups: str, select: bool = True) -> str:
    """A login (with SELECT on the app's tables unless told otherwise); its URL."""
    conn = login(name, *groups, select=select)
    return url_for(conn.info.dbname, user=name)


def embed_all(bank) -> None:
    claimed = bank.claim(1000)
    bank.complete(claimed, vectors=[bigram_vector(c.body) for c in claimed])


@pytest.fixture
def korean(db, bank):
    """tests.helpers.korean_bank, embedded, its near-duplicate pairs detected."""
    ids = korean_bank(bank)
    embed_all(bank)
    while db.execute("SELECT study_embed.detect_duplicates()").fetchone()[0]:
        pass
    return ids


@pytest.fixture
def ui_settings(db, login, server):
    server.vector = bigram_vector
    return Settings(
        database_url=reader_url(login, UI_ROLE, "study_embed_app"),
        embedding_url=server.url,
        embedding_model="test-model",
    )


@pytest.fixture
def ui(ui_settings):
    app = create_app(ui_settings, pool_size=2)
    with TestClient(
        app, base_url="http://127.0.0.1", raise_server_exceptions=False, follow_redirects=False
    ) as client:
        yield client


# -- search ----------------------------------------------------------------------------------------


def test_search_lists_the_users_matching_question_first_and_nothing_of_another_user(ui, korean):
    r = ui.get("/search", params={"user": korean["a"], "q": "광합성"})
    assert r.status_code == 200, r.text
    hits = question_links(r.text)
    assert hits[0] == korean["photo"]
    assert set(hits) & {korean["breath"], korean["king"]}
    assert korean["b_photo"] not in hits and "비밀B" not in r.text
    # and the other way round: b's search never shows a's questions
    r = ui.get("/search", params={"user": korean["b"], "q": "광합성 엽록체"})
    assert set(question_links(r.text)) == {korean["b_photo"], korean["b_secret"]}


def test_the_front_page_shows_the_served_generation(ui, korean):
    r = ui.get("/")
    assert r.status_code == 200
    row = re.search(r"<td>served</td><td>([^<]*)</td><td class=\"num\">(\d+)</td>", r.text)
    assert row and row.groups() == ("test-model", "1024")


def test_a_query_is_never_embedded_by_another_model_than_the_served_one(db, login, server, korean):
    settings = Settings(
        database_url=reader_url(login, UI_ROLE, "study_embed_app"),
        embedding_url=server.url,
        embedding_model="another-model",
    )
    with TestClient(
        create_app(settings, pool_size=2), base_url="http://127.0.0.1"
    ) as other_model_ui:
        r = other_model_ui.get("/search", params={"user": korean["a"], "q": "광합성"})
    assert r.status_code == 503
    assert "serves model &#39;test-model&#39;" in r.text
    assert server.requests == []  # refused before the query was embedded


def test_search_text_is_escaped_and_bounded(ui, korean):
    r = ui.get("/search", params={"user": korean["a"], "q": "<script>alert(1)</script>" * 100})
    assert r.status_code == 200
    assert "<script>" not in r.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in r.text
    value = re.search(r'name="q" value="([^"]*)"', r.text).group(1)
    assert len(value.replace("&lt;", "<").replace("&gt;", ">")) <= 500


def test_a_question_text_with_markup_is_shown_as_text(ui, korean, bank, db):
    qid = bank.insert('<img src=x onerror="alert(1)">광합성?', ("a", "b", "c", "d"))
    embed_all(bank)
    r = ui.get(f"/questions/{qid}", params={"user": bank.user_id})
    assert r.status_code == 200
    assert "<img" not in r.text and "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in r.text


def test_an_embedding_server_that_is_down_is_said_on_the_page(ui, korean, server):
    server.stop()
    r = ui.get("/search", params={"user": korean["a"], "q": "광합성"})
    assert r.status_code == 503
    assert f"the embedding server at {server.url} cannot embed the query" in r.text
    # the pages that need no embedding still work
    assert ui.get(f"/questions/{korean['photo']}", params={"user": korean["a"]}).status_code == 200
    assert ui.get("/duplicates", params={"user": korean["a"]}).status_code == 200


def test_an_empty_bank_and_a_bank_not_yet_embedded(ui, bank):
    r = ui.get("/search", params={"user": bank.user_id, "q": "광합성"})
    assert r.status_code == 200 and "has no questions yet" in r.text
    bank.insert("아직 임베딩되지 않은 문제?", ("a", "b", "c", "d"))
    r = ui.get("/search", params={"user": bank.user_id, "q": "광합성"})
    assert r.status_code == 200 and "1 questions wait for the listener" in r.text
    assert question_links(r.text) == []
    for path in ("/duplicates", "/clusters"):
        r = ui.get(path, params={"user": bank.user_id})
        assert r.status_code == 200 and 'class="empty"' in r.text


# -- the question page -----------------------------------------------------------------------------


def test_the_question_page_shows_the_question_its_neighbours_and_its_context(ui, korean):
    r = ui.get(f"/questions/{korean['photo']}", params={"user": korean["a"]})
    assert r.status_code == 200
    for text in (PHOTO[0], *PHOTO[1], "엽록체의 틸라코이드"):
        assert text in r.text
    assert re.search(r'<li class="correct">엽록체 <span class="mark">정답', r.text)
    similar = question_links(r.text.split("해설 생성기")[0])
    assert korean["breath"] in similar and korean["king"] in similar
    assert korean["photo"] not in similar[1:]  # itself excluded (the first link is the nav's)
    assert korean["b_photo"] not in question_links(r.text)
    # same topic only: the 한국사 questions drop out
    r = ui.get(f"/questions/{korean['photo']}", params={"user": korean["a"], "same_topic": "1"})
    similar = question_links(r.text.split("해설 생성기")[0])
    assert korean["breath"] in similar and korean["king"] not in similar


def test_another_users_question_shows_nothing_of_it(ui, korean):
    theirs = ui.get(f"/questions/{korean['b_secret']}", params={"user": korean["a"]})
    missing = ui.get("/questions/987654321", params={"user": korean["a"]})
    assert theirs.status_code == missing.status_code == 404
    for text in (OTHERS[0], *OTHERS[1], "비밀B"):
        assert text not in theirs.text
    # the same page as for an id that does not exist: nothing tells the two apart
    assert theirs.text.replace(str(korean["b_secret"]), "ID") == missing.text.replace(
        "987654321", "ID"
    )


@pytest.mark.parametrize(
    ("path", "params", "status", "says"),
    [
        ("/search", {}, 400, "user is missing"),
        ("/search", {"user": "abc"}, 400, "user must be a whole number"),
        ("/search", {"user": "0"}, 400, "must be a positive id"),
        ("/search", {"user": str(2**70)}, 400, "must be a positive id"),
        ("/search", {"user": "987654321"}, 404, "there is no user 987654321"),
        ("/clusters", {"user": "-3"}, 400, "must be a positive id"),
        ("/draft", {"user": "1x"}, 400, "user must be a whole number"),
        ("/questions/abc", {"user": "1"}, 404, "Not Found"),
        ("/no-such-page", {}, 404, "Not Found"),
    ],
)
def test_bad_input_gets_a_page_that_says_what_is_wrong(ui, korean, path, params, status, says):
    r = ui.get(path, params=params)
    assert r.status_code == status
    assert r.headers["content-type"].startswith("text/html")
    assert says in r.text and 'role="alert"' in r.text


def test_pages_forbid_foreign_scripts_and_frames_and_answer_only_to_loopback_names(ui, korean):
    r = ui.get("/", headers={})
    assert r.status_code == 200
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    # a script only from this origin (the draft page's file), never inline
    assert "script-src 'self';" in csp and "unsafe" not in csp
    assert "<script" not in r.text
    assert ui.get("/", headers={"host": "attacker.example"}).status_code == 400


def test_the_first_page_lists_users_with_their_bank_and_the_queue(ui, korean, bank, db):
    [topic] = db.execute(
        "SELECT study_topic_id FROM study_questions WHERE id = %s", (korean["photo"],)
    ).fetchone()
    bank.insert("기다리는 문제?", ("a", "b", "c", "d"), user=(korean["a"], topic))
    r = ui.get("/")
    assert r.status_code == 200
    row = re.search(
        rf"<td class=\"num\">{korean['a']}</td>\s*<td>([^<]*)</td>\s*"
        r"<td class=\"num\">(\d+)</td>\s*<td class=\"num\">(\d+)</td>",
        r.text,
    )
    assert row and row.group(1).endswith("@example.com")
    assert (int(row.group(2)), int(row.group(3))) == (10, 9)  # 10 live, 9 embedded
    assert re.search(r"<td>none</td><td class=\"num\">1</td>", r.text)
    assert re.search(r"<td>ready</td><td class=\"num\">11</td>", r.text)


# -- duplicates and clusters -----------------------------------------------------------------------


def open_pairs(db, user_id: int) -> set[tuple[int, int]]:
    return set(
        db.execute(
            "SELECT question_id, duplicate_of FROM study_embed.duplicate_candidates"
            " WHERE user_id = %s AND dismissed_at IS NULL",
            (user_id,),
        ).fetchall()
    )


def test_dismiss_closes_the_pair_through_the_function_and_only_the_users(ui, korean, db):
    pair = (korean["king"], korean["king_again"])
    assert pair in open_pairs(db, korean["a"])
    theirs = open_pairs(db, korean["b"])
    page = ui.get("/duplicates", params={"user": korean["a"]})
    assert KING[0] in page.text and KING_AGAIN[0] in page.text and "중복 아님" in page.text
    # b's user id with a's pair: refused, nothing changes
    form = {"question_id": pair[0], "duplicate_of": pair[1]}
    r = ui.post("/duplicates/dismiss", data={"user": korean["b"], **form})
    assert r.status_code == 404 and pair in open_pairs(db, korean["a"])
    # from another site (a forged form): refused
    r = ui.post(
        "/duplicates/dismiss",
        data={"user": korean["a"], **form},
        headers={"sec-fetch-site": "cross-site", "origin": "https://attacker.example"},
    )
    assert r.status_code == 403 and pair in open_pairs(db, korean["a"])
    r = ui.post(
        "/duplicates/dismiss",
        data={"user": korean["a"], **form},
        headers={"origin": "https://attacker.example"},
    )
    assert r.status_code == 403 and pair in open_pairs(db, korean["a"])
    # the user's own form
    r = ui.post(
        "/duplicates/dismiss",
        data={"user": korean["a"], **form},
        headers={"sec-fetch-site": "same-origin", "origin": "http://127.0.0.1"},
    )
    assert r.status_code == 303
    assert r.headers["location"] == f"/duplicates?user={korean['a']}&dismissed={pair[0]}-{pair[1]}"
    assert pair not in open_pairs(db, korean["a"]) and open_pairs(db, korean["b"]) == theirs
    page = ui.get(r.headers["location"])
    assert KING_AGAIN[0] not in page.text and "dismissed" in page.text
    # twice: there is no open pair any more
    assert ui.post("/duplicates/dismiss", data={"user": korean["a"], **form}).status_code == 404
    bad = ui.post("/duplicates/dismiss", data={"user": korean["a"], "question_id": "x"})
    assert bad.status_code == 400


def test_clusters_show_the_users_wrongly_answered_questions(ui, korean, db):
    for qid in (korean["photo"], korean["breath"], korean["king"]):
        db.execute(
            "INSERT INTO study_question_attempts (user_id, study_question_id, study_topic_id,"
            " selected_choice, correct_choice, is_correct)"
            " SELECT user_id, id, study_topic_id, 4, correct_choice, false"
            " FROM study_questions WHERE id = %s",
            (qid,),
        )
    r = ui.get("/clusters", params={"user": korean["a"]})
    assert r.status_code == 200
    assert set(question_links(r.text)) == {korean["photo"], korean["breath"], korean["king"]}
    assert r.text.count('<section class="cluster">') >= 1
    other = ui.get("/clusters", params={"user": korean["b"]})
    assert question_links(other.text) == []


# -- the role ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "says"),
    [
        ("owner", "is a superuser"),
        ("no_app", "lacks study_embed_app"),
        ("no_select", "cannot read the app's tables"),
        ("pipeline", "is a member of study_embed_pipeline"),
    ],
)
def test_the_ui_refuses_to_run_as_an_owner_or_without_its_rights(db, login, server, who, says):
    url = {
        "owner": lambda: url_for(db.info.dbname),
        "no_app": lambda: reader_url(login, "se_ui_no_app"),
        "no_select": lambda: reader_url(login, "se_ui_no_sel", "study_embed_app", select=False),
        "pipeline": lambda: reader_url(
            login, "se_ui_pipe", "study_embed_app", "study_embed_pipeline"
        ),
    }[who]()
    app = create_app(Settings(database_url=url, embedding_url=server.url), pool_size=1)
    with pytest.raises(Refused, match=says), TestClient(app, base_url="http://127.0.0.1"):
        pass


def test_the_ui_role_cannot_write_even_through_the_pages(ui, korean, ui_settings):
    with psycopg.connect(ui_settings.database_url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE study_questions SET question_text = 'x'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE study_embed.duplicate_candidates SET dismissed_at = now()")


def test_a_database_that_is_down_gives_a_page_that_says_so(ui, korean, db):
    assert ui.get("/search", params={"user": korean["a"]}).status_code == 200
    # the UI's connections are cut and it may not log in again: the database is "down" for it
    db.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(UI_ROLE)))
    try:
        db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (UI_ROLE,)
        )
        r = ui.get("/search", params={"user": korean["a"]})
        assert r.status_code == 503 and "the database cannot be reached" in r.text
    finally:
        db.execute(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(UI_ROLE)))
    # and it comes back by itself (the pool reconnects in the background)
    wait_until(
        lambda: ui.get("/search", params={"user": korean["a"]}).status_code == 200,
        timeout=30,
        what="the UI to reach the database again",
    )


# -- a draft, before it is saved -------------------------------------------------------------------

REPHRASED = "광합성이 일어나는 세포 소기관은 어느 것인가?"  # PHOTO's question, put otherwise
NEGATED = "광합성이 일어나지 않는 세포 소기관은?"  # one word away, another answer


def _draft(ui, user: int, question: str, correct: int | None, choices=PHOTO[1]):
    params = {"user": user, "question": question}
    params |= {f"c{i}": c for i, c in enumerate(choices, 1)}
    if correct is not None:
        params["correct"] = correct
    return ui.get("/draft", params=params)


def test_a_draft_shows_its_near_duplicates_in_the_users_bank_and_saves_nothing(ui, korean, db):
    before = db.execute("SELECT count(*), max(id) FROM study_questions").fetchone()
    r = _draft(ui, korean["a"], REPHRASED, 2)  # 엽록체, as PHOTO
    assert r.status_code == 200, r.text
    assert question_links(r.text) == [korean["photo"]]  # not b's copy of the same question
    assert 'data-state="checked"' in r.text and '<script src="/static/draft.js"' in r.text
    # b sees b's own copy only
    assert question_links(_draft(ui, korean["b"], REPHRASED, 2).text) == [korean["b_photo"]]
    assert db.execute("SELECT count(*), max(id) FROM study_questions").fetchone() == before
    # what was typed is kept in the form
    assert f">{REPHRASED}</textarea>" in r.text and 'value="2" checked' in r.text


def test_a_draft_one_word_away_with_another_answer_is_not_a_duplicate(ui, korean):
    """The same-answer signal of the near-duplicate pass: the draft reads as close as a
    rephrasing (it is shown when its answer is the same, or not given), but its correct
    choice differs."""
    a = korean["a"]
    assert question_links(_draft(ui, a, NEGATED, 1).text) == []  # 미토콘드리아
    assert question_links(_draft(ui, a, NEGATED, 2).text) == [korean["photo"]]
    assert question_links(_draft(ui, a, NEGATED, None).text) == [korean["photo"]]


def test_a_draft_page_without_a_question_checks_nothing(ui, korean, server):
    r = ui.get("/draft", params={"user": korean["a"], "question": "   ", "c1": "x"})
    assert r.status_code == 200 and 'data-state="empty"' in r.text
    assert question_links(r.text) == [] and server.requests == []


def test_a_draft_with_a_bad_answer_number_or_a_server_down_says_so(ui, korean, server):
    r = _draft(ui, korean["a"], REPHRASED, 5)
    assert r.status_code == 400 and "correct must be 1, 2, 3 or 4" in r.text
    server.stop()
    r = _draft(ui, korean["a"], REPHRASED, 2)
    assert r.status_code == 503
    assert f"the embedding server at {server.url} cannot embed the draft" in r.text
    assert f">{REPHRASED}</textarea>" in r.text  # the draft is not lost
