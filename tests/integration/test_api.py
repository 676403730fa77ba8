"""The app-facing Python API (study_embed.api) against the real database, connected as the
app's role (study_embed_app and SELECT on the app's tables): the async one under anyio's
pytest runner on asyncio, the synchronous one beside it with the same results and errors, and
the FastAPI example of docs/examples/ on top."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from study_embed.api import (
    AsyncStudyBank,
    DatabaseUnavailable,
    Draft,
    EmbeddingError,
    ModelMismatch,
    StudyBank,
)
from study_embed.embedders import ClientConfig
from study_embed_dev.localdb import free_port
from study_embed_dev.vectors import bigram_vector

from ..conftest import url_for
from ..helpers import KOREAN, korean_bank

ROOT = Path(__file__).resolve().parents[2]
ROLE = "se_api_app"
PHOTO_CHOICES = KOREAN["photo"][1]
REPHRASED = Draft("광합성이 일어나는 세포 소기관은 어느 것인가?", PHOTO_CHOICES, correct=2)
NEGATED = Draft("광합성이 일어나지 않는 세포 소기관은?", PHOTO_CHOICES, correct=1)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def korean(db, bank, server):
    """tests.helpers.korean_bank, embedded with the loopback server's vectors (bigram_vector:
    texts that share words are close), near-duplicates detected; a's photosynthesis question
    and the king question answered wrongly."""
    server.vector = bigram_vector
    ids = korean_bank(bank)
    claimed = bank.claim(1000)
    bank.complete(claimed, vectors=[bigram_vector(c.body) for c in claimed])
    while db.execute("SELECT study_embed.detect_duplicates()").fetchone()[0]:
        pass
    db.execute(
        "INSERT INTO study_question_attempts (user_id, study_question_id, study_topic_id,"
        " selected_choice, correct_choice, is_correct)"
        " SELECT user_id, id, study_topic_id, 4, correct_choice, false"
        " FROM study_questions WHERE id = ANY(%s)",
        ([ids["photo"], ids["king"], ids["king_again"]],),
    )
    return ids


@pytest.fixture
def app_url(db, login) -> str:
    login(ROLE, "study_embed_app", select=True)
    return url_for(db.info.dbname, user=ROLE)


def embedder(server, model: str = "test-model") -> ClientConfig:
    return ClientConfig(
        api="tei", url=server.url, model=model, api_key=None, timeout=5.0, max_inputs=32
    )


@pytest.mark.anyio
async def test_the_async_api_answers_every_read_for_the_user_only(app_url, server, korean):
    a, b = korean["a"], korean["b"]
    async with AsyncStudyBank(app_url, embedder(server), pool_size=2) as bank:
        assert await bank.served_model() == "test-model"
        hits = await bank.search(a, "광합성이 일어나는 소기관")
        assert hits[0].id == korean["photo"] and korean["b_photo"] not in {h.id for h in hits}
        assert {h.id for h in await bank.search(b, "광합성")} <= {
            korean["b_photo"],
            korean["b_secret"],
        }
        similar = await bank.similar(a, korean["king"])
        assert similar[0].id == korean["king_again"]
        assert await bank.similar(b, korean["king"]) == []  # a's question, asked as b
        # explanation context: test-model has no relevance floor, photo has the explanation
        context = await bank.explanation_context(a, korean["breath"], 3)
        assert [c.id for c in context] == [korean["photo"]] and context[0].explanation
        pairs = await bank.duplicates(a)
        assert {(p.question_id, p.duplicate_of) for p in pairs} == {
            (korean["king"], korean["king_again"])
        }
        assert await bank.duplicates(b) == []
        assert [h.id for h in await bank.check_draft(a, REPHRASED)] == [korean["photo"]]
        assert await bank.check_draft(a, NEGATED) == []  # another answer: not a duplicate
        assert [h.id for h in await bank.check_draft(b, REPHRASED)] == [korean["b_photo"]]
        clusters = await bank.clusters(a)
        assert {m.question_id for m in clusters} == {
            korean["photo"],
            korean["king"],
            korean["king_again"],
        }
        assert all(m.cluster_name for m in clusters)
        assert await bank.clusters(b) == []
        # with the words the questions share (the app's role runs every helper it takes)
        worded = await bank.clusters(a, threshold=0.5, word_weight=0.3)
        assert {m.question_id for m in worded} == {m.question_id for m in clusters}


@pytest.mark.anyio
async def test_the_async_api_raises_the_typed_errors(app_url, server, korean):
    a = korean["a"]
    async with AsyncStudyBank(app_url, embedder(server, "another-model")) as other:
        with pytest.raises(ModelMismatch, match="serves model 'test-model'"):
            await other.search(a, "광합성")
        with pytest.raises(ModelMismatch):
            await other.check_draft(a, REPHRASED)
        assert [m.question_id for m in await other.clusters(a)]  # no embedding: still served
    assert server.requests == []  # refused before anything was embedded
    async with AsyncStudyBank(app_url, embedder(server)) as bank:
        with pytest.raises(ValueError, match="k must be between 1 and 100"):
            await bank.search(a, "광합성", k=0)
        with pytest.raises(ValueError, match="recent must be between 1 and 500"):
            await bank.clusters(a, recent=501)
        with pytest.raises(ValueError, match="word_weight must be at least 0 and below 1"):
            await bank.clusters(a, word_weight=1.0)
        server.stop()
        with pytest.raises(EmbeddingError):
            await bank.search(a, "광합성")
    with pytest.raises(ValueError, match="a draft needs its question's text"):
        Draft("  ", PHOTO_CHOICES)
    with pytest.raises(ValueError, match="1, 2, 3 or 4"):
        Draft("q?", PHOTO_CHOICES, correct=5)
    with pytest.raises(DatabaseUnavailable):
        await AsyncStudyBank(_nowhere(), embedder(server)).open()


def _nowhere() -> str:
    """A database URL that nothing answers."""
    return f"postgresql://{ROLE}@127.0.0.1:{free_port()}/study_embed_test?connect_timeout=2"


@pytest.mark.anyio
async def test_the_async_api_serves_concurrent_requests_from_one_pool(app_url, server, korean):
    import anyio

    a = korean["a"]
    results: list[list[int]] = []

    async def one() -> None:
        results.append([h.id for h in await bank.check_draft(a, REPHRASED)])

    async with AsyncStudyBank(app_url, embedder(server), pool_size=2) as bank:
        async with anyio.create_task_group() as tg:
            for _ in range(12):
                tg.start_soon(one)
    assert results == [[korean["photo"]]] * 12


def test_the_synchronous_api_gives_the_same_results_and_errors(app_url, server, korean):
    a = korean["a"]
    with StudyBank(AsyncStudyBank(app_url, embedder(server))) as bank:
        assert [h.id for h in bank.check_draft(a, REPHRASED)] == [korean["photo"]]
        assert bank.check_draft(a, NEGATED) == []
        assert bank.search(a, "광합성이 일어나는 소기관")[0].id == korean["photo"]
        assert bank.similar(a, korean["king"])[0].id == korean["king_again"]
        assert [c.id for c in bank.explanation_context(a, korean["breath"], 3)] == [korean["photo"]]
        assert len(bank.duplicates(a)) == 1
        members = bank.clusters(a)
        assert all(dataclasses.is_dataclass(m) and m.cluster_name for m in members)
    with pytest.raises(RuntimeError, match="closed"):
        bank.search(a, "x")
    with (
        StudyBank(AsyncStudyBank(app_url, embedder(server, "another-model"))) as other,
        pytest.raises(ModelMismatch),
    ):
        other.search(a, "광합성")
    with pytest.raises(DatabaseUnavailable):
        StudyBank(AsyncStudyBank(_nowhere(), embedder(server)))


def _example():
    spec = importlib.util.spec_from_file_location(
        "fastapi_app", ROOT / "docs" / "examples" / "fastapi_app.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_fastapi_example_serves_the_reads_as_json(app_url, server, korean, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", app_url)
    monkeypatch.setenv("EMBEDDING_API", "tei")
    monkeypatch.setenv("EMBEDDING_URL", server.url)
    monkeypatch.setenv("EMBEDDING_MODEL", "test-model")
    a = {"x-user-id": str(korean["a"])}
    with TestClient(_example().app, raise_server_exceptions=False) as client:
        r = client.post(
            "/drafts/duplicates",
            json={"question": REPHRASED.question, "choices": list(PHOTO_CHOICES), "correct": 2},
            headers=a,
        )
        assert r.status_code == 200, r.text
        assert [h["id"] for h in r.json()] == [korean["photo"]]
        r = client.get("/search", params={"q": "광합성이 일어나는 소기관"}, headers=a)
        assert r.json()[0]["id"] == korean["photo"]
        r = client.get(f"/questions/{korean['breath']}/context", headers=a)
        assert [c["id"] for c in r.json()] == [korean["photo"]]
        r = client.get("/wrong-answers/clusters", headers=a)
        assert {m["question_id"] for m in r.json()} == {
            korean["photo"],
            korean["king"],
            korean["king_again"],
        }
        # another user sees nothing of a's
        b = {"x-user-id": str(korean["b"])}
        assert client.get(f"/questions/{korean['king']}/similar", headers=b).json() == []
        assert client.get("/search", params={"q": "x"}).status_code == 422  # no user
        server.stop()
        r = client.get("/search", params={"q": "광합성"}, headers=a)
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
