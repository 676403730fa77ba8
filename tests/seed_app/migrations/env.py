"""The seed app's Alembic environment, as an app adds study-embed to it: one import for the
filter that keeps autogenerate away from what study-embed owns."""

from __future__ import annotations

import os

from alembic import context
from models import Base
from sqlalchemy import create_engine

from study_embed.alembic import include_object

# SEED_APP_FILTER=off: the app before it learnt about study-embed (the test shows the drift)
FILTER = os.environ.get("SEED_APP_FILTER", "on") != "off"


def run_migrations_online() -> None:
    engine = create_engine(os.environ["SEED_APP_URL"])
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            include_object=include_object if FILTER else None,
        )
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
