"""195: study-embed keeps the embeddings correct (the one revision an app adds)."""

from alembic import op

import study_embed.alembic  # noqa: F401  (registers op.install_study_embed)

revision = "195"
down_revision = "194"


def upgrade() -> None:
    op.install_study_embed()


def downgrade() -> None:
    op.uninstall_study_embed()
