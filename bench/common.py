"""Shared by the benchmark scripts: a throwaway cluster and realistic question rows (the rows
come from the project's one loader, study_embed_dev.rows)."""

from __future__ import annotations

from pathlib import Path

from study_embed_dev.localdb import free_port, scratch_database
from study_embed_dev.rows import GENERATED_QUESTIONS as LOAD
from study_embed_dev.rows import GENERATED_QUESTIONS_MANY_USERS as LOAD_MANY
from study_embed_dev.rows import add_users

__all__ = ["LOAD", "LOAD_MANY", "ROOT", "add_users", "free_port", "scratch_database"]

ROOT = Path(__file__).resolve().parents[1]
