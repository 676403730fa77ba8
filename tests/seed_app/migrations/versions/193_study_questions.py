"""193: the question bank (study_questions, study_question_attempts; PR-2/PR-3)."""

import sqlalchemy as sa
from alembic import op

revision = "193"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("email", sa.String(320)),
    )
    op.create_table(
        "study_topics",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column(
            "user_id", sa.BigInteger, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("name", sa.String(200), nullable=False),
    )
    op.create_table(
        "study_questions",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column(
            "user_id", sa.BigInteger, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "study_topic_id",
            sa.BigInteger,
            sa.ForeignKey("study_topics.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("question_text", sa.Text, nullable=False),
        sa.Column("choice_1", sa.Text, nullable=False),
        sa.Column("choice_2", sa.Text, nullable=False),
        sa.Column("choice_3", sa.Text, nullable=False),
        sa.Column("choice_4", sa.Text, nullable=False),
        sa.Column("correct_choice", sa.SmallInteger, nullable=False),
        sa.Column("subject", sa.String(120)),
        sa.Column("scope", sa.String(200)),
        sa.Column("exam_name", sa.String(120)),
        sa.Column("exam_round", sa.String(120)),
        sa.Column("explanation", sa.Text),
        sa.Column("source_note", sa.Text),
        sa.Column("is_active", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("ai_explanation", sa.Text),
        sa.Column("ai_explanation_status", sa.String(20), nullable=False, server_default="none"),
        sa.Column("ai_explanation_generated_at", sa.DateTime(timezone=True)),
        sa.Column("ai_explanation_model", sa.String(120)),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("deleted_at", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "study_question_attempts",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column(
            "user_id", sa.BigInteger, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "study_question_id",
            sa.BigInteger,
            sa.ForeignKey("study_questions.id", ondelete="RESTRICT"),
            nullable=False,
        ),
        sa.Column(
            "study_topic_id",
            sa.BigInteger,
            sa.ForeignKey("study_topics.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("selected_choice", sa.SmallInteger, nullable=False),
        sa.Column("correct_choice", sa.SmallInteger, nullable=False),
        sa.Column("is_correct", sa.Boolean, nullable=False),
        sa.Column(
            "answered_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )


def downgrade() -> None:
    for table in ("study_question_attempts", "study_questions", "study_topics", "users"):
        op.drop_table(table)
