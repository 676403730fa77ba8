"""194: bge-m3 embeddings of the questions (PR-4): four columns, the status as the queue, and the
partial HNSW index."""

import sqlalchemy as sa
from alembic import op
from pgvector.sqlalchemy import Vector

revision = "194"
down_revision = "193"


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.add_column("study_questions", sa.Column("embedding", Vector(1024)))
    op.add_column(
        "study_questions",
        sa.Column("embedding_status", sa.String(20), nullable=False, server_default="none"),
    )
    op.add_column("study_questions", sa.Column("embedding_updated_at", sa.DateTime(timezone=True)))
    op.add_column("study_questions", sa.Column("embedding_model", sa.String(120)))
    op.create_index(
        "study_questions_embedding_hnsw",
        "study_questions",
        ["embedding"],
        postgresql_using="hnsw",
        postgresql_ops={"embedding": "vector_cosine_ops"},
        postgresql_where=sa.text("deleted_at IS NULL AND embedding IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("study_questions_embedding_hnsw", table_name="study_questions")
    for column in ("embedding_model", "embedding_updated_at", "embedding_status", "embedding"):
        op.drop_column("study_questions", column)
