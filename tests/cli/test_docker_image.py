"""docker/: the parts of the production stack that run without a Docker engine, against the
test cluster: the postgres image's init script, and the package as the listener image installs
it (a built wheel, not this checkout) migrating a database.  The static checks of the same
files are tests/unit/test_docker.py."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import psycopg
import pytest

from study_embed.migrate import Migrator

from ..conftest import CLUSTER, drop_database, url_for

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"


@pytest.mark.slow
def test_the_wheel_the_image_installs_migrates_a_database(tmp_path):
    """`pip install .` in the image installs a wheel, not this checkout: build it, and run its
    `study-embed migrate` (SQL from inside the wheel) against a new database."""
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "--wheel-dir",
            str(tmp_path / "dist"),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    wheel = next((tmp_path / "dist").glob("study_embed-*.whl"))
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        z.extractall(site)
    assert {"study_embed/db/queries/queue.sql", "study_embed/db/queries/bank.sql"} <= set(names)
    # the UI's templates and style sheet (read from the package at run time)
    assert {"study_embed/ui/templates/search.html", "study_embed/ui/static/style.css"} <= set(names)
    assert any(n.startswith("study_embed/db/migrations/") for n in names)
    assert not any(n.startswith(("tests/", "bench/", "study_embed_dev/")) for n in names)
    assert "study_embed/localdb.py" not in names  # development tools stay in the checkout
    name = f"wheel_{uuid.uuid4().hex[:8]}"
    CLUSTER.create_database(name)
    try:
        env = {
            **os.environ,
            "PYTHONPATH": str(site),
            "DATABASE_URL": url_for(name),
            "STUDY_EMBED_CRON": "off",
        }
        run = subprocess.run(
            [sys.executable, "-m", "study_embed.cli", "migrate"],
            env=env,
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert run.returncode == 0, run.stderr
        where = subprocess.run(
            [sys.executable, "-c", "import study_embed.sqlfiles as s;print(s.sql_dir())"],
            env=env,
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert where.stdout.strip() == str(site / "study_embed" / "db")
        # without DATABASE_URL the installed command says so; it starts no cluster of its own
        unset = {k: v for k, v in env.items() if k != "DATABASE_URL"}
        bare = subprocess.run(
            [sys.executable, "-m", "study_embed.cli", "status"],
            env=unset,
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert bare.returncode == 2 and "DATABASE_URL is not set" in bare.stderr, bare.stderr
        assert not (tmp_path / ".pgdata").exists()
        with psycopg.connect(url_for(name)) as conn:
            assert conn.execute("SELECT study_embed.embedding_dimension()").fetchone()[0] == 1024
    finally:
        drop_database(name)


def test_init_script_makes_a_listener_login_that_can_run_the_queue_and_nothing_else():
    script = DOCKER / "postgres" / "initdb" / "10-study-embed-listener-role.sh"
    name = f"initdb_{uuid.uuid4().hex[:8]}"
    login = f"worker_{uuid.uuid4().hex[:8]}"
    CLUSTER.create_database(name)
    env = {
        **os.environ,
        "PGHOST": str(CLUSTER.sockdir),
        "PGPORT": str(CLUSTER.port),
        "POSTGRES_USER": "postgres",
        "POSTGRES_DB": name,
        "LISTENER_DB_USER": login,
        "LISTENER_DB_PASSWORD": "it's a 'secret'",
    }
    try:
        missing = subprocess.run(
            ["bash", str(script)],
            capture_output=True,
            text=True,
            env={**env, "LISTENER_DB_PASSWORD": ""},
        )
        assert missing.returncode != 0 and "LISTENER_DB_PASSWORD" in missing.stderr
        for _ in range(2):  # a second run (re-used volume) is harmless
            r = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env)
            assert r.returncode == 0, r.stderr
        # as in the stack: the init script first, then `study-embed migrate`
        Migrator(url_for(name), cron=False, log=lambda _msg: None).run()
        with psycopg.connect(url_for("postgres")) as admin:
            can_login, password = admin.execute(
                "SELECT rolcanlogin, rolpassword FROM pg_authid WHERE rolname = %s", (login,)
            ).fetchone()
            assert can_login and password.startswith("SCRAM-SHA-256$")
        with psycopg.connect(url_for(name, user=login), autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM study_embed.claim(10)").fetchone()[0] == 0
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT question_text FROM study_questions")
    finally:
        drop_database(name)
        with psycopg.connect(url_for("postgres"), autocommit=True) as admin:
            admin.execute(
                psycopg.sql.SQL("DROP ROLE IF EXISTS {}").format(psycopg.sql.Identifier(login))
            )
