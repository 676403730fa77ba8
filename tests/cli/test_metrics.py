"""METRICS_PORT: /metrics counts what the listener did, /healthz and /readyz say what an
orchestrator needs, and `status --json` gives scripts the queue."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from ..conftest import _free_port
from ..helpers import listener_env, run_cli, statuses, wait_until


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def samples(port: int) -> dict[tuple[str, tuple], float]:
    status, text = get(port, "/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_count_what_the_listener_did_and_readiness_follows_the_server(
    bank, db, db_url, server, spawn
):
    port = _free_port()
    p = spawn("listen", env=listener_env(db_url, server, POLL_INTERVAL=0.5, METRICS_PORT=port))
    wait_until(lambda: get(port, "/healthz")[0] == 200, what="the endpoint")
    ids = [bank.insert(f"문제 {i}") for i in range(7)]
    poison = bank.insert("POISON row")
    server.poison = {"POISON"}
    wait_until(lambda: statuses(db) == {"ready": 7, "failed": 1}, what="all processed")
    m = samples(port)
    assert m[("study_embed_rows_embedded_total", ())] == 7
    assert m[("study_embed_rows_failed_total", (("error_class", "rejected"),))] == 1
    assert m[("study_embed_texts_sent_total", ())] >= 8
    assert m[("study_embed_breaker_open", ())] == 0
    assert m[("study_embed_batches_in_flight", ())] == 0
    assert m[("study_embed_database_up", ())] == 1
    assert m[("study_embed_rows", (("status", "ready"),))] == 7
    assert m[("study_embed_rows", (("status", "failed"),))] == 1
    assert m[("study_embed_embedding_request_seconds_count", ())] >= 1
    assert ("study_embed_oldest_waiting_seconds", ()) in m
    assert len(ids) == 7 and poison

    assert get(port, "/readyz")[0] == 200
    server.stop()  # nothing to embed: only readiness can tell
    wait_until(lambda: get(port, "/readyz")[0] == 503, timeout=10, what="not ready")
    status, body = get(port, "/readyz")
    assert json.loads(body)["embedding_server"] is False and json.loads(body)["database"] is True
    assert get(port, "/healthz")[0] == 200  # alive all the same
    server.start()
    wait_until(lambda: get(port, "/readyz")[0] == 200, timeout=10, what="ready again")
    p.terminate()
    p.wait(30)


def test_metrics_port_in_use_is_a_configuration_error(bank, db_url, server):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        r = run_cli("drain", env=listener_env(db_url, server, METRICS_PORT=s.getsockname()[1]))
    assert r.returncode == 2 and "METRICS_PORT" in r.stderr, r.stderr


def test_status_json(bank, db_url, server):
    bank.insert("POISON")
    bank.insert("fine")
    server.poison = {"POISON"}
    run_cli("drain", env=listener_env(db_url, server))
    r = run_cli("status", "--json", env=listener_env(db_url, server))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["statuses"]["ready"]["live"] == 1 and doc["statuses"]["failed"]["live"] == 1
    assert doc["waiting"] == 1
    [failed] = doc["failed_rows"]
    assert failed["waiting_for_edit"] and "too long" in failed["last_error"]
