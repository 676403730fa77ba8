"""db/idempotent/ reads top to bottom: no file calls a function that a later file defines, and
every function is defined in one place (read from the files; no database needed)."""

from __future__ import annotations

import re
from collections import Counter

from study_embed.sqlfiles import sql_dir
from study_embed_dev.schema import DEFINES, defined_in

CALLS = re.compile(r"study_embed\.(\w+)\s*\(")
FILES = sorted((sql_dir() / "idempotent").glob("*.sql"))


def _code(path) -> str:
    """The file without its comments and without the statements that only name functions
    (grants, ownership, comments on them)."""
    text = re.sub(r"--[^\n]*", "", path.read_text())
    return re.sub(
        r"(?is)\b(GRANT|REVOKE|ALTER FUNCTION|COMMENT ON FUNCTION|DROP FUNCTION)\b.*?;", "", text
    )


def test_no_file_calls_a_function_a_later_file_defines():
    where = defined_in()  # function -> the file that defines it
    order = [path.name for path in FILES]
    late = []
    for i, path in enumerate(FILES):
        for name in set(CALLS.findall(_code(path))):
            if name in where and order.index(where[name]) > i:
                late.append(f"{path.name} calls {name}(), defined in {where[name]}")
    assert late == []


def test_every_function_is_defined_in_one_file():
    where = Counter()
    for path in FILES:
        for name in set(DEFINES.findall(path.read_text())):
            where[name] += 1
    assert [n for n, k in where.items() if k > 1] == []


def test_the_claim_check_is_one_helper():
    """complete(), fail() and release() act on a row only while the presented claim is its
    current one; that test is written once."""
    queue = (sql_dir() / "idempotent" / "040_queue.sql").read_text()
    assert queue.count("study_embed._claim_is_current(q.embedding_status") == 3
    assert "embedding_claim_token = c.claim_token" not in queue
