"""Where the SQL lives: db/ in a checkout, study_embed/db inside an installed wheel."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path


def sql_dir() -> Path:
    packaged = Path(__file__).with_name("db")
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[2] / "db"
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError("cannot find the db/ directory of study-embed")


@cache
def queries() -> dict[str, str]:
    """The statements the Python code runs, from db/queries.sql, keyed by their `-- name:`."""
    text = (sql_dir() / "queries.sql").read_text()
    parts = re.split(r"^-- name: *(\S+) *$", text, flags=re.M)
    found = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [ln for ln in body.strip().splitlines() if not ln.lstrip().startswith("--")]
        found[name] = "\n".join(lines).strip().rstrip(";")
    return found
