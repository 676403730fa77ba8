"""A model change from 1024 to 384 dimensions, end to end through the command line: two
loopback embedding servers (the served model's and the next one's), `study-embed model begin`,
a listener that builds the next generation after the served queue, the switch refused until it
is complete, search through the new model only, a switch back, the drop."""

from __future__ import annotations

import json

import pytest

from study_embed.settings import EXIT_CONFIG
from study_embed_dev.embed_server import EmbedServer
from study_embed_dev.vectors import bigram_vector

from ..conftest import _free_port
from ..helpers import TEST_MODEL, korean_bank, listener_env, run_cli, wait_until
from .test_metrics import get

NEXT, NEXT_DIM = "next-model", 384


@pytest.fixture
def next_server():
    s = EmbedServer(dim=NEXT_DIM)
    yield s
    s.stop()


def generations(db_url: str, server: EmbedServer) -> dict[str, dict]:
    r = run_cli("status", "--json", env=listener_env(db_url, server))
    assert r.returncode == 0, r.stderr
    return {g["role"]: g for g in json.loads(r.stdout)["generations"]}


def test_a_change_from_1024_to_384_dimensions(bank, db, db_url, server, next_server):
    server.vector = next_server.vector = bigram_vector  # a query finds its question
    ids = korean_bank(bank)
    old = listener_env(db_url, server)
    both = listener_env(
        db_url, server, NEXT_EMBEDDING_URL=next_server.url, NEXT_EMBEDDING_MODEL=NEXT
    )
    assert run_cli("drain", env=old).returncode == 0
    live = db.execute("SELECT count(*) FROM study_questions").fetchone()[0]

    r = run_cli("model", "begin", NEXT, "--dimension", str(NEXT_DIM), env=old)
    assert r.returncode == 0, r.stderr
    assert "next" in r.stdout and NEXT in r.stdout
    assert generations(db_url, server)["next"]["missing"] == live

    r = run_cli("model", "switch", env=old)
    assert r.returncode == 1
    assert f"{live} live questions are not embedded by {NEXT} yet" in r.stderr

    # a listener without the next model's server leaves the next generation alone
    before = len(next_server.requests)
    assert run_cli("drain", env=old).returncode == 0
    assert len(next_server.requests) == before
    # one with it builds it (served queue first: an edit meanwhile is embedded by both)
    bank.update(ids["photo"], question_text="광합성은 식물 세포의 어디에서 일어나는가?")
    r = run_cli("drain", env=both)
    assert r.returncode == 0, r.stderr
    g = generations(db_url, server)
    assert g["next"]["ready"] == live and g["served"]["ready"] == live
    assert (
        db.execute(
            "SELECT count(*) FROM study_questions WHERE vector_dims(embedding_shadow) = %s",
            (NEXT_DIM,),
        ).fetchone()[0]
        == live
    )

    r = run_cli("model", "switch", env=old)
    assert r.returncode == 0, r.stderr
    g = generations(db_url, server)
    assert (g["served"]["model"], g["served"]["dimension"]) == (NEXT, NEXT_DIM)
    assert (g["previous"]["model"], g["previous"]["dimension"]) == (TEST_MODEL, 1024)

    # search embeds the query with the served model, whichever of the two configs has it
    query = ["search", "--user", str(ids["a"]), "광합성 엽록체", "--dense"]
    r = run_cli(*query, env=old)
    assert r.returncode == EXIT_CONFIG
    assert f"the database serves model '{NEXT}'" in r.stderr
    asked = len(next_server.requests)
    r = run_cli(*query, env=both)
    assert r.returncode == 0, r.stderr
    assert str(ids["photo"]) in r.stdout.splitlines()[1]
    assert len(next_server.requests) == asked + 1
    # a listener that has only the previous model refuses to start, and says why
    r = run_cli("drain", env=old)
    assert r.returncode == EXIT_CONFIG
    assert f"the database serves model '{NEXT}'" in r.stderr

    # an edit after the switch: the served generation by the new model, the previous by the old
    bank.update(ids["breath"], choice_1="미토콘드리아 기질")
    assert run_cli("drain", env=both).returncode == 0
    row = bank.row(ids["breath"])
    assert row["embedding_model"] == NEXT and len(row["embedding"].to_numpy()) == NEXT_DIM
    assert row["embedding_shadow_model"] == TEST_MODEL
    assert row["embedding_shadow_status"] == "ready"

    # back, and forth again, then the previous generation dropped
    assert run_cli("model", "switch", env=old).returncode == 0
    assert generations(db_url, server)["served"]["model"] == TEST_MODEL
    r = run_cli(*query, env=old)
    assert r.returncode == 0 and str(ids["photo"]) in r.stdout.splitlines()[1]
    assert run_cli("model", "switch", env=old).returncode == 0
    r = run_cli("model", "drop", env=old)
    assert r.returncode == 0, r.stderr
    assert set(generations(db_url, server)) == {"served"}
    r = run_cli("model", "switch", env=old)
    assert r.returncode == 1 and "no model change is in progress" in r.stderr


def test_model_command_errors(db_url, server):
    env = listener_env(db_url, server)
    r = run_cli("model", "begin", env=env)
    assert r.returncode == EXIT_CONFIG and "--dimension" in r.stderr
    r = run_cli("model", "begin", TEST_MODEL, "--dimension", "1024", env=env)
    assert r.returncode == 1 and "is the served model already" in r.stderr
    r = run_cli("model", "drop", env=env)
    assert r.returncode == 1 and "no model change is in progress" in r.stderr
    r = run_cli("reembed", env=listener_env(db_url, server, EMBEDDING_MODEL="other"))
    assert r.returncode == EXIT_CONFIG and "model begin other" in r.stderr
    r = run_cli("drain", env=listener_env(db_url, server, NEXT_EMBEDDING_URL="http://127.0.0.1:9"))
    assert r.returncode == EXIT_CONFIG and "go together" in r.stderr


def test_after_a_switch_readiness_asks_the_served_models_server(
    bank, db_url, server, next_server, spawn
):
    """Once NEXT_EMBEDDING_*'s model is served, /readyz asks its server: EMBEDDING_*'s (now
    the previous generation's) being down does not make the listener unready, and the served
    queue drains."""
    korean_bank(bank)
    env = listener_env(db_url, server, NEXT_EMBEDDING_URL=next_server.url)
    env["NEXT_EMBEDDING_MODEL"] = NEXT
    assert run_cli("drain", env=env).returncode == 0
    assert run_cli("model", "begin", NEXT, "--dimension", str(NEXT_DIM), env=env).returncode == 0
    assert run_cli("drain", env=env).returncode == 0
    r = run_cli("model", "switch", env=env)
    assert r.returncode == 0, r.stderr
    server.stop()  # the previous generation's server
    port = _free_port()
    p = spawn("listen", env={**env, "POLL_INTERVAL": "0.5", "METRICS_PORT": str(port)})
    wait_until(lambda: get(port, "/healthz")[0] == 200, what="the endpoint")
    # ready once it has read the generations (until then it knows only EMBEDDING_*)
    wait_until(lambda: get(port, "/readyz")[0] == 200, timeout=15, what="ready")
    question = bank.insert("새로 추가된 문제")
    wait_until(lambda: bank.row(question)["embedding_status"] == "ready", what="served by NEXT")
    next_server.stop()
    wait_until(lambda: get(port, "/readyz")[0] == 503, timeout=10, what="not ready")
    p.terminate()
    p.wait(30)
