"""The demo's web UI: `study-embed ui` on the demo's bank, connected as a role that may only read.

    .venv/bin/python -m study_embed_dev.demo.ui down          (make demo-down runs it)

`make demo` calls up() last: it makes the login role study_embed_ui (study_embed_app and SELECT
on the app's tables, nothing else), starts the UI in the background on DEMO_UI_PORT (8765),
waits until it answers and returns its address.  Its log: .demo/ui.log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from psycopg import sql

from . import server

ROLE = "study_embed_ui"
APP_TABLES = ("users", "study_topics", "study_questions", "study_question_attempts")
STATE = server.DEMO / "ui.json"
LOG = server.DEMO / "ui.log"
HOST = "127.0.0.1"
PORT = int(os.environ.get("DEMO_UI_PORT", "8765"))
CLI = Path(sys.executable).with_name("study-embed")
MARKER = b"study-embed\x00ui"
say = server.say


def reader_role(admin_url: str) -> None:
    """The UI's login: study_embed_app and SELECT on the app's tables (idempotent)."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,)).fetchone():
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(ROLE)))
        conn.execute(sql.SQL("GRANT study_embed_app TO {}").format(sql.Identifier(ROLE)))
        conn.execute(
            sql.SQL("GRANT SELECT ON {} TO {}").format(
                sql.SQL(", ").join(sql.Identifier("public", t) for t in APP_TABLES),
                sql.Identifier(ROLE),
            )
        )


def up(url: str, served: server.Served) -> str:
    """Start the UI on the database at `url` (a URL for ROLE); returns its base address."""
    down(quiet=True)
    base = f"http://{HOST}:{PORT}"
    if server.answers(f"{base}/"):
        sys.exit(f"port {PORT} is taken by another server: stop it or set DEMO_UI_PORT")
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "EMBEDDING_API": "openai",
        "EMBEDDING_URL": served.url.removesuffix("/v1"),
        "EMBEDDING_MODEL": served.model,
        "UI_HOST": HOST,
        "UI_PORT": str(PORT),
    }
    with LOG.open("wb") as log:
        proc = subprocess.Popen(
            [str(CLI), "ui"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    started = time.monotonic()
    while not server.answers(f"{base}/"):
        if proc.poll() is not None or time.monotonic() - started > 30:
            tail = LOG.read_text(errors="replace").splitlines()[-15:]
            if proc.poll() is None:
                proc.kill()
            sys.exit("the UI did not start:\n  " + "\n  ".join(tail))
        time.sleep(0.1)
    STATE.write_text(json.dumps({"pid": proc.pid, "url": base}))
    return base


def down(quiet: bool = False) -> None:
    server.stop(STATE, MARKER, "the demo UI", quiet)


if __name__ == "__main__":
    if sys.argv[1:] != ["down"]:
        sys.exit(__doc__)
    down()
