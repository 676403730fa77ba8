"""Past one machine: a real streaming standby (pg_basebackup -R, on loopback) of a primary of
its own.  Every read the app and the UI make, answered by the standby, as the app's role; the
readers pointed at it by DATABASE_READ_URL while the one write goes to the primary; `status`
showing the standby's lag; and a failover in the middle of a drain: the primary killed, the
standby promoted, the listener (a multi-host URL, target_session_attrs=read-write) carrying on
there, no row lost, the state machine's invariant holding, pg_cron's tick running on the new
primary."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import anyio
import psycopg
import pytest
from starlette.testclient import TestClient

from study_embed.api import AsyncStudyBank, Draft
from study_embed.embedders import ClientConfig
from study_embed.migrate import Migrator
from study_embed.settings import Settings
from study_embed.ui.app import create_app
from study_embed_dev.localdb import Cluster, free_port
from study_embed_dev.rows import add_attempts, add_question, add_topic, add_user
from study_embed_dev.vectors import bigram_vector

from ..conftest import scratch_dir
from ..helpers import (
    KOREAN,
    MORE_BIOLOGY,
    TEST_MODEL,
    listener_env,
    queue_bookkeeping_broken,
    ready_rows_not_of_their_text,
    run_cli,
    status_counts,
    wait_until,
)

pytestmark = pytest.mark.slow
DB = "app"
READER = "se_replica_reader"


@dataclass
class Pair:
    primary: Cluster
    standby: Cluster

    def url(self, which: str, user: str = "postgres") -> str:
        return getattr(self, which).url(DB, user)

    def both(self, user: str = "postgres", attrs: str = "read-write") -> str:
        """A multi-host URL over both, as an app or a listener would be given."""
        p, s = self.primary, self.standby
        return (
            f"postgresql://{user}@/{DB}?host={p.sockdir},{s.sockdir}&port={p.port},{s.port}"
            f"&target_session_attrs={attrs}&connect_timeout=2"
        )

    def caught_up(self) -> bool:
        """The standby has replayed everything the primary has written."""
        with (
            psycopg.connect(self.url("primary"), autocommit=True) as p,
            psycopg.connect(self.url("standby"), autocommit=True) as s,
        ):
            [(lsn,)] = p.execute("SELECT pg_current_wal_lsn()::text").fetchall()
            [(behind,)] = s.execute(
                "SELECT pg_wal_lsn_diff(%s::pg_lsn, pg_last_wal_replay_lsn()) > 0", (lsn,)
            ).fetchall()
            return not behind


@pytest.fixture(params=["synchronous"])
def replicated(request) -> Iterator[Pair]:
    """A primary with a migrated database (the pg_cron tick scheduled), the app's reading role,
    and a streaming standby: synchronous (the primary waits for it to confirm each commit),
    unless the test asks for an asynchronous one."""
    primary = Cluster(datadir=scratch_dir("study-embed-primary-") / "data", port=free_port())
    standby = None
    try:
        primary.init()
        primary.start()
        primary.create_database(DB)
        Migrator(primary.url(DB), model=TEST_MODEL, log=lambda _m: None).run()
        with psycopg.connect(primary.url(DB), autocommit=True) as c:
            c.execute(f"CREATE ROLE {READER} LOGIN")
            c.execute(f"GRANT study_embed_app TO {READER}")
            c.execute(
                "GRANT SELECT ON users, study_topics, study_questions, study_question_attempts"
                f" TO {READER}"
            )
        standby = primary.standby(
            scratch_dir("study-embed-standby-") / "data",
            free_port(),
            synchronous=request.param == "synchronous",
        )
        yield Pair(primary, standby)
    finally:
        if standby is not None:
            standby.destroy()
        primary.destroy()


def _load_korean(url: str) -> dict[str, int]:
    """tests.helpers.KOREAN and MORE_BIOLOGY for user a, the photosynthesis question and a
    secret one for user b; a's photosynthesis and king questions answered wrongly, the
    photosynthesis one explained."""
    ids: dict[str, int] = {}
    with psycopg.connect(url, autocommit=True) as c:
        a, b = add_user(c, "a@example.com"), add_user(c, "b@example.com")
        ta, tb = add_topic(c, a, "생명과학"), add_topic(c, b, "생명과학")
        ids |= {"a": a, "b": b}
        for name in ("photo", "breath", "king", "king_again"):
            text, choices, correct = KOREAN[name]
            extra = {"explanation": "엽록체"} if name == "photo" else {}
            ids[name] = add_question(c, a, ta, text, choices, correct, **extra)
        for text, choices, correct in MORE_BIOLOGY:
            add_question(c, a, ta, text, choices, correct)
        for name, key in (("b_photo", "photo"), ("b_secret", "b_secret")):
            text, choices, correct = KOREAN[key]
            ids[name] = add_question(c, b, tb, text, choices, correct)
        add_attempts(c, [(a, ids[k], ta, 4, 2, None) for k in ("photo", "king", "king_again")])
    return ids


def test_every_read_of_the_app_and_the_ui_is_answered_by_a_standby(replicated, server):
    server.vector = bigram_vector
    ids = _load_korean(replicated.url("primary"))
    r = run_cli("drain", env=listener_env(replicated.url("primary"), server))
    assert r.returncode == 0, r.stderr
    with psycopg.connect(replicated.url("primary"), autocommit=True) as c:
        while c.execute("SELECT study_embed.detect_duplicates()").fetchone()[0]:
            pass
    wait_until(replicated.caught_up, timeout=30, what="the standby to replay")
    standby = replicated.url("standby", READER)
    with psycopg.connect(standby) as c:
        assert c.execute("SELECT pg_is_in_recovery()").fetchone()[0]
    a, b = ids["a"], ids["b"]
    embedder = ClientConfig(
        api="tei", url=server.url, model=TEST_MODEL, api_key=None, timeout=5, max_inputs=32
    )

    # the Python API, every read
    async def reads() -> None:
        async with AsyncStudyBank(standby, embedder, pool_size=2) as bank:
            assert (await bank.search(a, "광합성이 일어나는 소기관"))[0].id == ids["photo"]
            assert (await bank.similar(a, ids["king"]))[0].id == ids["king_again"]
            assert [c.id for c in await bank.explanation_context(a, ids["breath"], 3)] == [
                ids["photo"]
            ]
            assert len(await bank.duplicates(a)) == 1
            draft = Draft("광합성이 일어나는 세포 소기관은 어느 것인가?", KOREAN["photo"][1], 2)
            assert [h.id for h in await bank.check_draft(a, draft)] == [ids["photo"]]
            assert {m.question_id for m in await bank.clusters(a)} == {
                ids["photo"],
                ids["king"],
                ids["king_again"],
            }
            assert await bank.clusters(b) == []

    anyio.run(reads)

    # the UI: its pages read on the standby, its one write (dismissing a pair) on the primary
    settings = Settings(
        database_url=replicated.url("primary", READER),
        database_read_url=standby,
        embedding_url=server.url,
        embedding_model=TEST_MODEL,
    )
    with TestClient(create_app(settings, pool_size=2), base_url="http://127.0.0.1") as ui:
        for path, params in (
            ("/", {}),
            ("/search", {"user": a, "q": "광합성"}),
            (f"/questions/{ids['photo']}", {"user": a}),
            ("/duplicates", {"user": a}),
            ("/clusters", {"user": a}),
            ("/draft", {"user": a, "question": "광합성이 일어나는 세포 소기관은?"}),
        ):
            page = ui.get(path, params=params)
            assert page.status_code == 200, (path, page.text)
        pair = f"{ids['king']}-{ids['king_again']}"
        done = ui.post(
            "/duplicates/dismiss",
            data={"user": a, "question_id": ids["king"], "duplicate_of": ids["king_again"]},
            follow_redirects=False,
        )
        assert done.status_code == 303 and pair in done.headers["location"]
    with psycopg.connect(replicated.url("primary")) as c:
        assert c.execute(
            "SELECT dismissed_at IS NOT NULL FROM study_embed.duplicate_candidates"
            " WHERE question_id = %s AND duplicate_of = %s",
            (ids["king"], ids["king_again"]),
        ).fetchone() == (True,)

    # status where it reads from: the standby's lag, or nothing on the primary
    # (an operator's command: its role reads the failures view, which the app's role does not)
    env = listener_env(
        replicated.url("primary"), server, DATABASE_READ_URL=replicated.url("standby")
    )
    r = run_cli("status", "--json", env=env)
    assert r.returncode == 0, r.stderr
    replica = json.loads(r.stdout)["replica"]
    assert replica is not None and replica["replay_bytes_behind"] >= 0
    r = run_cli("status", env=env)
    assert r.returncode == 0 and "read from a standby" in r.stdout
    r = run_cli("status", "--json", env=listener_env(replicated.url("primary"), server))
    assert json.loads(r.stdout)["replica"] is None


def _rows_correct(url: str) -> tuple[int, list]:
    """The number of ready rows, and what breaks the state machine's invariant on this
    database: a ready row whose vector is not its current text's, queue bookkeeping out of
    step, counters that disagree with the rows."""
    with psycopg.connect(url, autocommit=True) as c:
        ready, broken = ready_rows_not_of_their_text(c, lambda t: bigram_vector(t, 1024))
        broken += [("bookkeeping", *r) for r in queue_bookkeeping_broken(c)]
        got, want = status_counts(c)
        if got != want:
            broken.append(("counts", got, want))
    return ready, broken


@pytest.mark.parametrize("replicated", ["synchronous", "asynchronous"], indirect=True)
def test_a_failover_in_the_middle_of_a_drain_loses_no_row(replicated, server, spawn, request):
    """Synchronous: nothing the primary confirmed is missing on the standby.  Asynchronous: a
    completion the standby never received is lost with the primary; its row is pending there
    under a claim nobody holds, and is embedded again once the lease (5 s here) runs out."""
    server.vector = bigram_vector
    server.delay = 0.15  # a drain of a few seconds, so that the primary dies in its middle
    rows = 400
    with psycopg.connect(replicated.url("primary"), autocommit=True) as c:
        uid = add_user(c, "many@example.com")
        tid = add_topic(c, uid, "t")
        for i in range(rows):
            add_question(c, uid, tid, f"failover question {i}?", ("a", "b", "c", f"d{i}"))
    wait_until(replicated.caught_up, timeout=30, what="the standby to replay")
    # the listener knows both hosts and wants the one that takes writes
    proc = spawn(
        "listen",
        env=listener_env(replicated.both(), server, LEASE_SECONDS=5, BATCH_SIZE=10),
    )

    def ready_on(which: str) -> int:
        with psycopg.connect(replicated.url(which), autocommit=True) as c:
            return c.execute(
                "SELECT count(*) FROM study_questions WHERE embedding_status = 'ready'"
            ).fetchone()[0]

    wait_until(lambda: ready_on("primary") >= rows // 4, timeout=60, what="a quarter embedded")
    before = ready_on("primary")
    assert before < rows, "the drain ended before the failover: slow the server down"
    replicated.primary.stop("immediate")  # a crash: no shutdown checkpoint, no goodbye
    replicated.standby.promote()
    promoted = time.monotonic()
    wait_until(lambda: ready_on("standby") == rows, timeout=60, what="every row, after failover")
    took = time.monotonic() - promoted
    print(
        f"failover: {before} of {rows} ready when the primary died; all {rows} ready "
        f"{took:.1f} s after the promotion"
    )
    assert proc.poll() is None  # the listener carried on
    ready, broken = _rows_correct(replicated.url("standby"))
    assert ready == rows and broken == []
    if "asynchronous" in request.node.name:
        return  # the tick is checked once
    # pg_cron's tick runs on the new primary (its job came with the data; the scheduler starts
    # once recovery ends): a run that began after the promotion, within its minute
    with psycopg.connect(replicated.standby.url("postgres"), autocommit=True) as c:
        [(job,)] = c.execute(
            "SELECT jobid FROM cron.job WHERE jobname = %s", (f"study_embed_tick:{DB}",)
        ).fetchall()

        def ticked() -> bool:
            return bool(
                c.execute(
                    "SELECT 1 FROM cron.job_run_details WHERE jobid = %s AND status = 'succeeded'"
                    " AND start_time > now() - make_interval(secs => %s)",
                    (job, time.monotonic() - promoted),
                ).fetchone()
            )

        wait_until(ticked, timeout=75, every=1, what="the tick on the new primary")
