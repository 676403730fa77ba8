"""What an ORM user meets: the app's own SQLAlchemy 2 model, used by a role that does not own the
tables (sync here; the async engine sends the same statements).

- ordinary ORM work passes;
- a write of a pipeline column is refused with one error class (SQLSTATE 42501, which SQLAlchemy
  raises as ProgrammingError), whatever the column or value;
- the REST read-then-PUT race: a PUT that carries the pipeline columns it read fails once the
  listener embedded the row in between; the pattern the README documents (a write schema of the
  content columns, and the pipeline columns guarded in the model) never sends them.
"""

from __future__ import annotations

from datetime import datetime

import psycopg
import pytest
from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    SmallInteger,
    String,
    Text,
    create_engine,
    select,
)
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, validates

from ..conftest import url_for
from ..helpers import QuestionBank

APP_ROLE = "se_orm_app"


class SeedBase(DeclarativeBase):
    pass


class AppBase(DeclarativeBase):
    pass


class QuestionColumns:
    """The seed's model (models/study_question.py), columns as it maps them."""

    __tablename__ = "study_questions"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    user_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    study_topic_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    question_text: Mapped[str] = mapped_column(Text, nullable=False)
    choice_1: Mapped[str] = mapped_column(Text, nullable=False)
    choice_2: Mapped[str] = mapped_column(Text, nullable=False)
    choice_3: Mapped[str] = mapped_column(Text, nullable=False)
    choice_4: Mapped[str] = mapped_column(Text, nullable=False)
    correct_choice: Mapped[int] = mapped_column(SmallInteger, nullable=False)
    subject: Mapped[str | None] = mapped_column(String(120))
    scope: Mapped[str | None] = mapped_column(String(200))
    explanation: Mapped[str | None] = mapped_column(Text)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True, nullable=False)
    embedding = mapped_column(Vector(1024), nullable=True)
    embedding_status: Mapped[str] = mapped_column(String(20), default="none", nullable=False)
    embedding_updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    embedding_model: Mapped[str | None] = mapped_column(String(120))
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class StudyQuestion(QuestionColumns, SeedBase):
    """Mapped as the seed maps it: every column writable."""


# ---- the pattern the README documents (section "Using it from an ORM") ------------------------

PIPELINE_COLUMNS = ("embedding", "embedding_status", "embedding_updated_at", "embedding_model")
# what a client may send in a POST/PUT body: the content, never the pipeline's columns
WRITABLE = (
    "question_text",
    "choice_1",
    "choice_2",
    "choice_3",
    "choice_4",
    "correct_choice",
    "subject",
    "scope",
    "explanation",
    "is_active",
)


class GuardedQuestion(QuestionColumns, AppBase):
    """The same table; the pipeline's columns are read-only in Python (loading still fills them)."""

    @validates(*PIPELINE_COLUMNS)
    def _read_only(self, key, value):
        raise ValueError(f"{key} is written by the embedding pipeline, not by the app")


def apply_put(session: Session, model: type[QuestionColumns], qid: int, body: dict) -> None:
    """A PUT handler: load the row, copy the writable fields of the body, commit."""
    q = session.get(model, qid)
    for key in WRITABLE:
        if key in body:
            setattr(q, key, body[key])
    session.commit()


# -----------------------------------------------------------------------------------------------


@pytest.fixture
def engine(db, login):
    login(APP_ROLE, "study_embed_app", dml=True).close()
    url = url_for(db.info.dbname, user=APP_ROLE).replace("postgresql://", "postgresql+psycopg://")
    eng = create_engine(url)
    yield eng
    eng.dispose()


def _embed(bank: QuestionBank) -> None:
    """The listener, in between two requests."""
    claimed = bank.claim(100)
    assert claimed
    bank.complete(claimed)


def test_ordinary_orm_work_passes(engine, bank):
    with Session(engine) as s:
        q = StudyQuestion(
            user_id=bank.user_id,
            study_topic_id=bank.topic_id,
            question_text="광합성이 일어나는 곳은?",
            choice_1="엽록체",
            choice_2="미토콘드리아",
            choice_3="핵",
            choice_4="리보솜",
            correct_choice=1,
        )
        s.add(q)
        s.commit()
        qid = q.id
        assert q.embedding_status == "none"
    _embed(bank)
    with Session(engine) as s:
        q = s.get(StudyQuestion, qid)
        assert q.embedding_status == "ready" and q.embedding is not None
        q.correct_choice, q.explanation, q.subject = 2, "틸라코이드", "생명과학"
        s.commit()
        s.refresh(q)
        assert q.embedding_status == "ready"
        q.question_text = "광합성이 일어나는 세포 소기관은?"
        s.commit()
        s.refresh(q)
        assert q.embedding_status == "stale" and q.embedding is not None  # old vector serves
        q.embedding_status = "stale"  # asking for a re-embed is a client's right
        s.commit()
        q.deleted_at = datetime.now().astimezone()
        s.commit()
    assert bank.row(qid)["deleted_at"] is not None


@pytest.mark.parametrize(
    "column, value",
    [
        ("embedding_status", "pending"),
        ("embedding_status", "failed"),
        ("embedding_status", "none"),
        ("embedding_status", "bogus"),
        ("embedding_model", "x"),
        ("embedding_updated_at", datetime(2020, 1, 1).astimezone()),
        ("embedding", [0.0] * 1024),
    ],
)
def test_every_reserved_write_is_one_error_class(engine, bank, column, value):
    qid = bank.insert()
    _embed(bank)
    with Session(engine) as s:
        q = s.get(StudyQuestion, qid)
        setattr(q, column, value)
        with pytest.raises(ProgrammingError) as err:
            s.commit()
        assert isinstance(err.value.orig, psycopg.errors.InsufficientPrivilege)
        assert err.value.orig.sqlstate == "42501"
    assert bank.status(qid) == "ready"


def test_a_put_of_what_was_read_fails_once_the_listener_wrote(engine, bank):
    """The naive handler: the body is the whole object the client GOT, written back as is."""
    qid = bank.insert("q", ("a", "b", "c", "d"))
    with Session(engine) as s:
        got = {
            c.key: getattr(s.get(StudyQuestion, qid), c.key)
            for c in StudyQuestion.__table__.columns
        }
    assert got["embedding_status"] == "none"
    _embed(bank)
    got["correct_choice"] = 3
    with Session(engine) as s:
        q = s.get(StudyQuestion, qid)
        for key, value in got.items():
            setattr(q, key, value)
        with pytest.raises(ProgrammingError):
            s.commit()
    assert bank.row(qid)["correct_choice"] == 1


def test_the_documented_pattern_never_sends_the_pipeline_columns(engine, bank):
    with Session(engine) as s:  # the guarded model inserts as usual (its defaults included)
        q = GuardedQuestion(
            user_id=bank.user_id,
            study_topic_id=bank.topic_id,
            question_text="q",
            choice_1="a",
            choice_2="b",
            choice_3="c",
            choice_4="d",
            correct_choice=1,
        )
        s.add(q)
        s.commit()
        qid = q.id
    assert bank.status(qid) == "none"
    with Session(engine) as s:
        got = {
            c.key: getattr(s.get(GuardedQuestion, qid), c.key)
            for c in StudyQuestion.__table__.columns
        }
    _embed(bank)
    # the same stale body, through the write schema: only the content is written
    got["correct_choice"] = 3
    with Session(engine) as s:
        apply_put(s, GuardedQuestion, qid, got)
    row = bank.row(qid)
    assert (row["correct_choice"], row["embedding_status"]) == (3, "ready")
    # a text edit through it queues the row again
    with Session(engine) as s:
        apply_put(s, GuardedQuestion, qid, {**got, "question_text": "q, reworded"})
    assert bank.status(qid) == "stale"
    # and code that tries to write a pipeline column is stopped before any SQL is sent
    with Session(engine) as s:
        q = s.get(GuardedQuestion, qid)
        assert q.embedding_status == "stale"  # loading fills it
        with pytest.raises(ValueError, match="written by the embedding pipeline"):
            q.embedding_status = "ready"
        assert (
            s.execute(
                select(GuardedQuestion.embedding_status).where(GuardedQuestion.id == qid)
            ).scalar_one()
            == "stale"
        )
