"""Installing study-embed from an app's Alembic migrations.

One revision of the app installs it::

    from alembic import op
    import study_embed.alembic  # noqa: F401  (registers the operations)

    def upgrade():
        op.install_study_embed()

    def downgrade():
        op.uninstall_study_embed()

and the app's env.py keeps autogenerate away from what study-embed owns::

    from study_embed.alembic import include_object
    context.configure(..., include_object=include_object)

`install_study_embed` runs exactly what `study-embed migrate` runs (study_embed.migrate), with
the same ledger (study_embed.schema_migrations): either tool sees what the other applied, and a
later version of study-embed is brought in by another revision calling the operation again, or
by `study-embed migrate`.  It runs outside the revision's transaction (Alembic's
autocommit_block: what came before is committed first), because it works in bounded
transactions of its own: the adoption of an existing bank is a walk of many short batches, and
pg_cron's job is scheduled in another database.

Why an operation and not a branch of study-embed's own revisions: study-embed's schema is
versioned by its own ledger (its migrations are plain SQL, also run by `study-embed migrate`
and the listener container); a branch would keep a second record of the same steps, and the
two could disagree.  The operation is one call the app orders against its own revisions (after
193-194, which made the tables).
"""

from __future__ import annotations

import os
from typing import Any

from alembic.operations import MigrateOperation, Operations

from .migrate import Migrator
from .settings import Settings

# the suffixes of a generation's columns (db/idempotent/046_generations.sql, _slot_columns)
SLOT_SUFFIXES = (
    "",
    "_status",
    "_model",
    "_updated_at",
    "_source_sha256",
    "_claim_token",
    "_due_at",
    "_queued_at",
    "_attempts",
    "_last_error",
)
# What study-embed adds to the app's tables (db/migrations): columns and indexes that the app's
# models do not declare, and must not have to.
OWN_COLUMNS = {
    "study_questions": frozenset(
        {
            "embedding_source_sha256",
            "embedding_claim_token",
            "embedding_due_at",
            "embedding_queued_at",
            "embedding_attempts",
            "embedding_last_error",
            # during a model change (`study-embed model begin`), the other generation's
            *(f"embedding_shadow{s}" for s in SLOT_SUFFIXES),
        }
    )
}
OWN_INDEXES = frozenset(
    {
        "study_questions_embedding_queue",
        "study_questions_embedding_hnsw",
        "study_questions_embedding_shadow_queue",
        "study_questions_embedding_shadow_hnsw",
        "study_questions_user_topic",
        "study_question_attempts_question",
        "study_question_attempts_user_answered",
    }
)
SCHEMA = "study_embed"


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Alembic's include_object hook: False for what study-embed owns (its schema, the
    pipeline's columns and indexes on the app's tables) when the app's models do not declare
    it, so that autogenerate neither drops it nor reports it as drift."""
    if not reflected or compare_to is not None:
        return True  # declared by the app's models: the app's to compare
    if type_ == "table":
        return getattr(obj, "schema", None) != SCHEMA
    if type_ == "column":
        table = getattr(getattr(obj, "table", None), "name", None)
        return name not in OWN_COLUMNS.get(str(table), frozenset())
    if type_ == "index":
        return name not in OWN_INDEXES
    return True


def _libpq_url(operations: Operations) -> str:
    """The revision's database as a libpq URL (what psql and psycopg take)."""
    engine_url = operations.get_bind().engine.url
    if engine_url.get_backend_name() != "postgresql":
        raise RuntimeError(f"study-embed needs PostgreSQL, not {engine_url.get_backend_name()}")
    return engine_url.set(drivername="postgresql").render_as_string(hide_password=False)


def _settings(url: str) -> Settings:
    """EMBEDDING_MODEL, EMBEDDING_DIM and STUDY_EMBED_CRON, as `study-embed migrate` reads
    them; the database is the revision's."""
    return Settings.resolve(None, "migrate", {**os.environ, "DATABASE_URL": url})


@Operations.register_operation("install_study_embed")
class InstallStudyEmbed(MigrateOperation):
    """Install or upgrade study-embed, as `study-embed migrate` does; adopting an existing
    bank keeps the vectors of EMBEDDING_MODEL (reembed_all: keeps none)."""

    def __init__(self, *, reembed_all: bool = False, cron: bool | None = None) -> None:
        self.reembed_all = reembed_all
        self.cron = cron

    @classmethod
    def install_study_embed(
        cls, operations: Operations, *, reembed_all: bool = False, cron: bool | None = None
    ) -> None:
        operations.invoke(cls(reembed_all=reembed_all, cron=cron))

    def reverse(self) -> UninstallStudyEmbed:
        return UninstallStudyEmbed(cron=self.cron)


@Operations.register_operation("uninstall_study_embed")
class UninstallStudyEmbed(MigrateOperation):
    """Remove study-embed (db/uninstall.sql): its schema, triggers, columns and pg_cron job;
    the app's tables, embeddings and HNSW index stay.  Refuses when the app depends on it."""

    def __init__(self, *, cron: bool | None = None) -> None:
        self.cron = cron

    @classmethod
    def uninstall_study_embed(cls, operations: Operations, *, cron: bool | None = None) -> None:
        operations.invoke(cls(cron=cron))

    def reverse(self) -> InstallStudyEmbed:
        return InstallStudyEmbed(cron=self.cron)


def _log(message: str) -> None:
    print(message, flush=True)


@Operations.implementation_for(InstallStudyEmbed)
def _install(operations: Operations, operation: InstallStudyEmbed) -> None:
    cfg = _settings(_libpq_url(operations))
    migrator = Migrator(
        cfg.database_url,
        embedding_dim=cfg.embedding_dim,
        model=cfg.embedding_model,
        reembed=operation.reembed_all,
        cron=cfg.study_embed_cron if operation.cron is None else operation.cron,
        log=_log,
    )
    with operations.get_context().autocommit_block():
        _log(migrator.run().summary())


@Operations.implementation_for(UninstallStudyEmbed)
def _uninstall(operations: Operations, operation: UninstallStudyEmbed) -> None:
    cfg = _settings(_libpq_url(operations))
    migrator = Migrator(
        cfg.database_url,
        cron=cfg.study_embed_cron if operation.cron is None else operation.cron,
        log=_log,
    )
    with operations.get_context().autocommit_block():
        _log(migrator.uninstall())


__all__ = [
    "include_object",
    "InstallStudyEmbed",
    "UninstallStudyEmbed",
    "OWN_COLUMNS",
    "OWN_INDEXES",
]
