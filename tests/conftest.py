"""Test fixtures: a throwaway PostgreSQL cluster with the real pgvector and pg_cron.

The tests come in three layers: tests/unit (no database, no server; milliseconds),
tests/integration (SQL and the Python modules against the real cluster) and tests/cli (the
`study-embed` command as a black box, with the loopback embedding server).  The cluster starts
only for the last two (their conftest.py asks for it).

The cluster is started once per session (as the unprivileged `postgres` user when the suite runs
as root, since initdb refuses root), pg_cron preloaded in the `postgres` database with
background workers.  pytest-postgresql builds a migrated template database once and clones it
for every test.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import psycopg
import pytest
from pgvector.psycopg import register_vector
from psycopg import sql
from pytest_postgresql import factories

from study_embed.migrate import Migrator
from study_embed_dev.embed_server import EmbedServer
from study_embed_dev.localdb import Cluster

from .helpers import TEST_MODEL, QuestionBank


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scratch_dir(prefix: str = "study-embed-test-") -> Path:
    """A temporary directory the unprivileged server user can reach (pytest's tmp_path is 0700)."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(d, 0o755)
    return d


# Its directory is made by pg_cluster, in the one process that starts it (not by every process
# that imports this module: pytest-xdist's controller never does); destroy() removes it all.
CLUSTER = Cluster(
    datadir=Path(tempfile.gettempdir()) / f"study-embed-test-{uuid.uuid4().hex[:8]}" / "data",
    port=_free_port(),
)
TEMPLATE_DB = "study_embed_test"


def url_for(dbname: str, user: str = "postgres") -> str:
    return CLUSTER.url(dbname, user)


def fresh_database(name: str, embedding_dim: int | None = None) -> str:
    """A new, migrated database in the test cluster (no cron job); returns its URL."""
    drop_database(name)
    CLUSTER.create_database(name)
    url = url_for(name)
    Migrator(
        url, embedding_dim=embedding_dim, model=TEST_MODEL, cron=False, log=lambda _msg: None
    ).run()
    return url


def drop_database(name: str) -> None:
    with psycopg.connect(url_for("postgres"), autocommit=True) as c:
        c.execute(
            psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                psycopg.sql.Identifier(name)
            )
        )


@pytest.fixture(scope="session")
def pg_cluster():
    CLUSTER.datadir.parent.mkdir()
    os.chmod(CLUSTER.datadir.parent, 0o755)  # the unprivileged server user reaches it
    CLUSTER.init()
    CLUSTER.start()
    yield CLUSTER
    CLUSTER.destroy()


def _load_schema(host, port, user, dbname, password=None, **kwargs):
    # No cron job for the template: pg_cron's worker would hold a connection to it, and a
    # template with connections cannot be cloned.  The cron tests schedule their own.
    Migrator(url_for(dbname), model=TEST_MODEL, cron=False, log=lambda _msg: None).run()


pg_noproc = factories.postgresql_noproc(
    host=str(CLUSTER.sockdir),
    port=CLUSTER.port,
    user="postgres",
    dbname=TEMPLATE_DB,
    load=[_load_schema],
)
postgresql = factories.postgresql("pg_noproc")


@pytest.fixture
def db(postgresql: psycopg.Connection) -> psycopg.Connection:
    """An autocommit connection to a fresh, migrated database."""
    postgresql.autocommit = True
    return postgresql


@pytest.fixture
def db_url(db: psycopg.Connection) -> str:
    return url_for(db.info.dbname)


@pytest.fixture
def bank(db: psycopg.Connection) -> QuestionBank:
    return QuestionBank(db)


@pytest.fixture
def connect(db_url):
    """Open more connections to the test database (closed at teardown)."""
    opened: list[psycopg.Connection] = []

    def _connect(**kwargs) -> psycopg.Connection:
        kwargs.setdefault("autocommit", True)
        c = psycopg.connect(db_url, **kwargs)
        opened.append(c)
        return c

    yield _connect
    for c in opened:
        c.close()


# ------------------------------------------------------------------------------ roles

APP_TABLES = ("users", "study_topics", "study_questions", "study_question_attempts")


def _ensure_login(name: str, *member_of: str) -> None:
    with psycopg.connect(url_for("postgres"), autocommit=True) as admin:
        if not admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
        for group in member_of:
            admin.execute(
                sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(name))
            )


def _grant(db: psycopg.Connection, role: str, privileges: str) -> None:
    db.execute(
        sql.SQL("GRANT {} ON {} TO {}").format(
            sql.SQL(privileges),
            sql.SQL(", ").join(map(sql.Identifier, APP_TABLES)),
            sql.Identifier(role),
        )
    )


@pytest.fixture
def login(db):
    """login(name, *groups, dml=False, select=False) -> a connection to the test database as
    that role (with `dml`: SELECT, INSERT, UPDATE and DELETE on the app's tables, as an app;
    with `select`: SELECT only, as the UI)."""
    opened: list[psycopg.Connection] = []

    def _login(
        name: str, *groups: str, dml: bool = False, select: bool = False
    ) -> psycopg.Connection:
        _ensure_login(name, *groups)
        if dml or select:
            _grant(db, name, "SELECT, INSERT, UPDATE, DELETE" if dml else "SELECT")
        conn = psycopg.connect(url_for(db.info.dbname, user=name), autocommit=True)
        register_vector(conn)
        opened.append(conn)
        return conn

    yield _login
    for c in opened:
        c.close()


# ------------------------------------------------------------------------------ processes


@pytest.fixture
def server():
    s = EmbedServer(dim=1024)
    yield s
    s.stop()


@pytest.fixture
def empty_database_url():
    name = "never_migrated"
    drop_database(name)
    CLUSTER.create_database(name)
    yield url_for(name)
    drop_database(name)


@pytest.fixture
def spawn():
    procs: list[subprocess.Popen] = []

    def _spawn(*args, env: dict) -> subprocess.Popen:
        p = subprocess.Popen(
            [sys.executable, "-m", "study_embed.cli", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(p)
        return p

    yield _spawn
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(10)
