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
def queries(*files: str) -> dict[str, str]:
    """The statements of db/queries/FILE.sql for each file named, keyed by their `-- name:`
    (a name is defined once across them)."""
    found: dict[str, str] = {}
    for file in files:
        text = (sql_dir() / "queries" / f"{file}.sql").read_text()
        parts = re.split(r"^-- name: *(\S+) *$", text, flags=re.M)
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in found:
                raise ValueError(f"db/queries/{file}.sql: {name} is defined twice")
            lines = [ln for ln in body.strip().splitlines() if not ln.lstrip().startswith("--")]
            found[name] = "\n".join(lines).strip().rstrip(";")
    return found
