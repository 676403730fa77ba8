"""Shared by the benchmark scripts: a throwaway cluster and realistic question rows (the rows
come from the project's one loader, study_embed_dev.rows)."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg

from study_embed_dev.localdb import free_port, scratch_database
from study_embed_dev.rows import GENERATED_QUESTIONS as LOAD
from study_embed_dev.rows import GENERATED_QUESTIONS_MANY_USERS as LOAD_MANY
from study_embed_dev.rows import add_topic, add_user, add_users

__all__ = ["LOAD", "LOAD_MANY", "ROOT", "add_users", "free_port", "fresh_rows", "scratch_database"]

ROOT = Path(__file__).resolve().parents[1]


def fresh_rows(url: str, n: int) -> None:
    """The bank emptied, then `n` new questions of one user, none embedded yet, analyzed."""
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("TRUNCATE study_question_attempts, study_questions CASCADE")
        uid = add_user(c, f"bench-{time.time_ns()}@example.com")
        tid = add_topic(c, uid, "t")
        c.execute(LOAD, {"uid": uid, "tid": tid, "n": n})
        c.execute("VACUUM ANALYZE study_questions")
