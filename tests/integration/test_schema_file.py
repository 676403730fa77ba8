"""db/schema.sql is the schema that the migrations and the idempotent files build."""

from __future__ import annotations

from study_embed.sqlfiles import sql_dir
from study_embed_dev.schema import defined_in, dump


def test_schema_sql_is_what_migrate_builds(db_url):
    committed = (sql_dir() / "schema.sql").read_text()
    assert dump(db_url) == committed, "db/schema.sql is not current: run `make schema`"


def test_every_function_in_the_database_names_its_file(db_url):
    assert "(not in db/idempotent)" not in dump(db_url)
    assert defined_in()["claim"] == "040_queue.sql"
