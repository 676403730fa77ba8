import uuid

import psycopg
import pytest

from ..conftest import CLUSTER, url_for


@pytest.fixture(scope="session", autouse=True)
def _cluster(pg_cluster):
    """Every test here runs against the throwaway cluster."""
    return pg_cluster


@pytest.fixture
def empty_db():
    """A database of its own, not migrated (dropped afterwards, its pg_cron jobs with it)."""
    name = f"mig_{uuid.uuid4().hex[:10]}"
    CLUSTER.create_database(name)
    yield url_for(name)
    with psycopg.connect(url_for("postgres"), autocommit=True) as c:
        if c.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_cron'").fetchone():
            c.execute("SELECT cron.unschedule(jobid) FROM cron.job WHERE database = %s", (name,))
        c.execute(
            psycopg.sql.SQL("DROP DATABASE {} WITH (FORCE)").format(psycopg.sql.Identifier(name))
        )
