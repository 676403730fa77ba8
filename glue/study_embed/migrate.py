"""`make migrate` / `study-embed migrate`: apply db/ to DATABASE_URL with psql.

- db/migrations/NNNN_*.sql run once each, in order, each in one transaction with its ledger
  row (study_embed.schema_migrations, with the file's sha256).  An applied file whose content
  changed is refused.
- db/idempotent/*.sql (functions, triggers, views, grants) are re-applied, in one transaction,
  whenever any of them changed since the last run (their combined sha256 is in the ledger).
  The status counts are then recomputed in a transaction of their own, at REPEATABLE READ,
  which blocks no writer.
- The rows of a bank embedded before study-embed (the columns were added under them) are then
  adopted, a bounded batch per transaction (study_embed.adopt(), db/idempotent/045_adoption.sql):
  ready rows whose vector the configured model made are kept as they are, the others queued.
  The state CHECKs, added NOT VALID, are validated once no such row is left.
- db/cron.sql schedules study_embed.tick() every minute in pg_cron's database.
- A session advisory lock serialises concurrent migrators; a second run applies nothing.

Next to a running app: every transaction runs with a short `lock_timeout`.  A DDL statement
that waits for a table lock holds up every later writer (and, for ACCESS EXCLUSIVE, reader)
queued behind it, so rather than wait long it gives way, and the transaction is tried again
after a pause, a bounded number of times.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from .backoff import Backoff
from .sqlfiles import queries, sql_dir

LOCK_KEY = 0x5354_5544_5945_4D42 & 0x7FFF_FFFF_FFFF_FFFF  # "STUDYEMB"
IDEMPOTENT_LEDGER_NAME = "idempotent/*"
# HNSW (0.5), l2_normalize() and sparsevec (0.7: _unit(), the words of wrong-answer clusters)
MIN_PGVECTOR = (0, 7, 0)
LOCK_TIMEOUT = "1s"  # longest a migration statement queues other sessions behind itself
LOCK_TRIES = 30  # transactions tried before migrate gives up on a busy table
HNSW = "study_questions_embedding_shadow_hnsw"  # the next generation's graph
PROGRESS_EVERY = 10.0  # seconds between progress lines of a long index build
PRELOCK_TIMEOUT = "30s"  # a model step's wait for an autovacuum to yield (Migrator.generation)
# an edited migration file may name the digests of the versions it replaces: a database that
# applied one of them has applied this one
_REPLACES = re.compile(r"^-- replaces sha256: ([0-9a-f]{64})\s*$", re.MULTILINE)
ADOPT_BATCH = 1000  # rows per adoption transaction to start with
ADOPT_BATCH_MAX = 20000
ADOPT_TARGET_SECONDS = 0.5  # an adoption batch holds the row locks of its queued rows this long
_LOCK_NOT_AVAILABLE = re.compile(r"ERROR:\s+55P03:")  # psql's VERBOSITY=verbose
_SERIALIZATION = re.compile(r"ERROR:\s+40001:")


class MigrationError(Exception):
    """A migration cannot proceed; the message says why and what to do."""


@dataclass
class Report:
    applied: list[str] = field(default_factory=list)
    idempotent: bool = False
    cron: str = "skipped"
    # what the adoption did in this run, by outcome (empty: there was nothing to adopt)
    adoption: dict[str, int] = field(default_factory=dict)
    validated: list[str] = field(default_factory=list)

    def adoption_summary(self) -> str:
        total = sum(self.adoption.values())
        adopted = self.adoption.get("adopted", 0)
        queued = sum(n for k, n in self.adoption.items() if k.startswith("queued"))
        lines = [
            f"adopt: {total} row(s) walked: {adopted} adopted (kept, no embedding request), "
            f"{queued} queued, {total - adopted - queued} already study-embed's"
        ]
        lines += [f"  {n:>10}  {k}" for k, n in self.adoption.items()]
        return "\n".join(lines)

    def summary(self) -> str:
        if (
            not self.applied
            and not self.idempotent
            and not self.adoption
            and not self.validated
            and self.cron in ("up to date", "skipped")
        ):
            return "migrate: nothing to apply, the database is up to date" + (
                "" if self.cron == "up to date" else " (pg_cron tick not managed: --no-cron)"
            )
        parts = [
            f"applied {len(self.applied)} migration(s)"
            + (f": {', '.join(self.applied)}" if self.applied else "")
        ]
        parts.append("functions/triggers/views " + ("applied" if self.idempotent else "up to date"))
        if self.validated:
            parts.append(f"validated {', '.join(self.validated)}")
        parts.append(f"pg_cron tick {self.cron}")
        text = "migrate: " + "; ".join(parts)
        return (self.adoption_summary() + "\n" + text) if self.adoption else text


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split(".")[:3] if x.isdigit())


class Migrator:
    def __init__(
        self,
        url: str,
        *,
        embedding_dim: int | None = None,
        model: str = "BAAI/bge-m3",
        reembed: bool = False,
        cron: bool = True,
        db_dir: Path | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.url = url
        self.embedding_dim = embedding_dim
        self.model = model
        self.reembed = reembed
        self.cron = cron
        self.db_dir = db_dir or sql_dir()
        self.q = queries("migrate")
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        psql = shutil.which("psql")
        if not psql:
            raise MigrationError("psql is not installed: install postgresql-client (make deps)")
        self.psql = psql

    # -- psql ------------------------------------------------------------------------------------

    def _psql(
        self,
        script: str,
        variables: dict[str, str],
        url: str | None = None,
        *,
        what: str = "the migration",
        isolation: str | None = None,
    ) -> None:
        """Run `script` in one transaction, with a short lock_timeout; a lock that is not
        granted in time (or, at REPEATABLE READ, a serialization failure) rolls the whole
        transaction back, and it is tried again after a pause."""
        cmd = [
            self.psql,
            url or self.url,
            "--no-psqlrc",
            "--quiet",
            "--single-transaction",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            "VERBOSITY=verbose",
        ]
        for k, v in variables.items():
            cmd += ["-v", f"{k}={v}"]
        head = f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}';\n"
        if isolation:
            head = f"SET TRANSACTION ISOLATION LEVEL {isolation};\n" + head
        backoff = Backoff(base=0.5, cap=5.0)
        for attempt in range(1, LOCK_TRIES + 1):
            r = subprocess.run(
                cmd,
                input=head + script,
                text=True,
                capture_output=True,
                env={**os.environ, "PGOPTIONS": "-c client_min_messages=warning"},
            )
            if r.returncode == 0:
                return
            busy = _LOCK_NOT_AVAILABLE.search(r.stderr) or (
                isolation and _SERIALIZATION.search(r.stderr)
            )
            if not busy or attempt == LOCK_TRIES:
                if busy:
                    raise MigrationError(
                        f"{what}: a table stayed locked by other sessions through {LOCK_TRIES} "
                        f"tries (lock_timeout {LOCK_TIMEOUT} each); nothing was applied. Find "
                        "the long transaction in pg_stat_activity and run migrate again."
                    )
                raise MigrationError(r.stderr.strip() or f"psql exited with {r.returncode}")
            delay = backoff.next_delay()
            self.log(
                f"migrate: {what} waits for a lock held by another session; rolled back, "
                f"trying again in {delay:.1f} s ({attempt}/{LOCK_TRIES})"
            )
            time.sleep(delay)

    # -- checks ----------------------------------------------------------------------------------

    def _preflight(self, conn: psycopg.Connection) -> dict[str, str]:
        row = conn.execute(self.q["migrate_pgvector"]).fetchone()
        if row is None:
            raise MigrationError(
                "pgvector is not installed on this PostgreSQL server. On Debian run `make deps`; "
                "on a managed service enable the `vector` extension (RDS, Cloud SQL, Azure, "
                "Supabase and Neon all offer it)."
            )
        version = row[1] or row[0]
        if _version_tuple(version) < MIN_PGVECTOR:
            raise MigrationError(
                f"pgvector {version} is too old: study-embed needs 0.7.0 or newer "
                "(l2_normalize, sparsevec)"
            )
        cron_db = None
        if self.cron:
            row = conn.execute(self.q["migrate_cron_database"]).fetchone()
            cron_db = row[0] if row else None
            if not cron_db:
                raise MigrationError(
                    "pg_cron is not preloaded: add shared_preload_libraries = 'pg_cron' (and "
                    "cron.database_name) to postgresql.conf and restart PostgreSQL, or enable "
                    "pg_cron in your provider's parameter group. To migrate without the pg_cron "
                    "tick (listeners then poll), pass --no-cron or set STUDY_EMBED_CRON=off."
                )
        dbname = conn.info.dbname
        existing = conn.execute(self.q["migrate_embedding_dimension"]).fetchone()
        dim = self.embedding_dim
        if existing is not None:
            if dim is not None and dim != existing[0]:
                raise MigrationError(
                    f"study_questions.embedding is vector({existing[0]}) but EMBEDDING_DIM={dim}. "
                    "Changing the dimension means a new model: re-create the column and re-embed "
                    "every row; migrate does not do that by itself."
                )
            dim = existing[0]
        dim = dim or 1024
        if not 1 <= dim <= 16000:
            raise MigrationError(f"EMBEDDING_DIM must be between 1 and 16000, not {dim}")
        return {
            "embedding_dim": str(dim),
            "embedding_model": self.model,
            "app_db": dbname,
            "cron_db": cron_db or "",
        }

    # -- steps -----------------------------------------------------------------------------------

    def _ledger(self, conn: psycopg.Connection) -> dict[str, str]:
        conn.execute(self.q["migrate_ledger"])
        return dict(conn.execute(self.q["migrate_applied"]).fetchall())

    def _vector_schema(self, conn: psycopg.Connection) -> str:
        row = conn.execute(self.q["migrate_vector_schema"]).fetchone()
        if row is None:
            raise MigrationError("the vector extension is missing after the migrations ran")
        schema, public_create = row
        if public_create:
            self.log(
                f"migrate: WARNING: pgvector is installed in schema {schema!r}, where every role "
                "may create objects (CREATE for PUBLIC, the default before PostgreSQL 15). "
                "study-embed's functions never resolve a name there, but any other code whose "
                f"search_path includes {schema!r} can be hijacked by a function another role "
                f"creates in it. Fix: REVOKE CREATE ON SCHEMA {schema} FROM PUBLIC."
            )
        return schema

    def _apply_migrations(
        self, ledger: dict[str, str], variables: dict[str, str], report: Report
    ) -> None:
        files = sorted((self.db_dir / "migrations").glob("*.sql"))
        for path in files:
            rel = f"migrations/{path.name}"
            content = path.read_bytes()
            digest = _sha256(content)
            if rel in ledger:
                replaced = set(_REPLACES.findall(content.decode()))
                if ledger[rel] != digest and ledger[rel] not in replaced:
                    raise MigrationError(
                        f"db/{rel} was edited after it was applied (applied sha256 "
                        f"{ledger[rel][:12]}…, file now {digest[:12]}…). Applied migrations are "
                        "immutable: restore the file and put the change in a new migration."
                    )
                continue
            self.log(f"migrate: applying db/{rel}")
            script = (
                f"\\i {_quote_psql(path)}\n"
                "INSERT INTO study_embed.schema_migrations (filename, sha256)"
                " VALUES (:'migration_file', :'migration_sha256');\n"
            )
            self._psql(
                script,
                {**variables, "migration_file": rel, "migration_sha256": digest},
                what=f"db/{rel}",
            )
            report.applied.append(path.name)

    def _idempotent(self, vector_schema: str) -> tuple[str, str]:
        """db/idempotent as one psql script, and its digest (the ledger's record of it)."""
        files = sorted((self.db_dir / "idempotent").glob("*.sql"))
        h = hashlib.sha256()
        for path in files:
            h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        h.update(vector_schema.encode())
        # SQL-standard bodies, trigger WHEN clauses and views bind their names when they are
        # created: resolve them in pg_catalog only, never in a schema another role can write.
        script = "SET search_path = pg_catalog, pg_temp;\n"
        script += "".join(f"\\i {_quote_psql(p)}\n" for p in files)
        return script, h.hexdigest()

    def _apply_idempotent(
        self, ledger: dict[str, str], variables: dict[str, str], report: Report, force: bool
    ) -> None:
        script, digest = self._idempotent(variables["vector_schema"])
        if not force and not report.applied and ledger.get(IDEMPOTENT_LEDGER_NAME) == digest:
            return
        self.log("migrate: applying db/idempotent (functions, triggers, views, privileges)")
        self._psql(script, variables, what="db/idempotent")
        # the counts, outside the DDL transaction: REPEATABLE READ blocks no writer (see
        # study_embed.recount); the ledger row goes with them, so a failure here is redone
        self._psql(
            "SELECT study_embed.recount();\n"
            "INSERT INTO study_embed.schema_migrations (filename, sha256)"
            " VALUES (:'migration_file', :'migration_sha256')"
            " ON CONFLICT (filename) DO UPDATE"
            " SET sha256 = excluded.sha256, applied_at = now();\n",
            {"migration_file": IDEMPOTENT_LEDGER_NAME, "migration_sha256": digest},
            what="the status recount",
            isolation="REPEATABLE READ",
        )
        report.idempotent = True

    def _adopt(self, conn: psycopg.Connection, report: Report) -> None:
        """Walk the rows written before study-embed, a bounded batch per transaction, until
        the walk is finished (it resumes where a crashed or stopped run left it)."""
        row = conn.execute(self.q["migrate_adoption"]).fetchone()
        assert row is not None
        model, reembed, after_id, started, done = row
        if done:
            if self.reembed:
                self.log(
                    "migrate: --reembed-all: the adoption finished earlier, there is nothing left "
                    "to adopt; `study-embed reembed` queues rows of another model"
                )
            return
        if started and (model, reembed) != (self.model, self.reembed):
            raise MigrationError(
                f"an adoption is under way (up to id {after_id}) keeping the vectors of {model!r}"
                f"{' (re-embedding all)' if reembed else ''}; run migrate again with "
                f"EMBEDDING_MODEL={model}{' and --reembed-all' if reembed else ''} to finish it"
            )
        if not started and not self.reembed:
            models: dict[str, int] = dict(
                conn.execute(self.q["migrate_adoption_models"]).fetchall()
            )
            if models and self.model not in models:
                found = ", ".join(
                    f"{n} by {m or '(no model recorded)'!r}" for m, n in models.items()
                )
                raise MigrationError(
                    f"the bank has ready rows from before study-embed ({found}) but none made by "
                    f"the configured model {self.model!r}: adopting now would re-embed them all. "
                    "Set EMBEDDING_MODEL to the name the old worker stored (if it is the same "
                    "model), or pass --reembed-all to re-embed every row."
                )
        if not started:
            conn.execute(self.q["migrate_serve_model"], {"model": self.model})
        last = conn.execute(self.q["migrate_last_id"]).fetchone()
        last_id = (last[0] if last else None) or 0
        conn.execute("SELECT set_config('lock_timeout', %s, false)", (LOCK_TIMEOUT,))
        batch, tries = ADOPT_BATCH, 0
        backoff = Backoff(base=0.5, cap=5.0)
        last_log = time.monotonic()
        params = {"model": self.model, "reembed": self.reembed}
        while True:
            began = time.monotonic()
            try:
                rows = conn.execute(
                    self.q["migrate_adopt"], {**params, "batch_size": batch}
                ).fetchall()
            except psycopg.errors.LockNotAvailable:
                tries += 1
                if tries >= LOCK_TRIES:
                    raise MigrationError(
                        f"the adoption: rows stayed locked by other sessions through {tries} "
                        "tries; what it did so far is kept. Run migrate again to go on."
                    ) from None
                time.sleep(backoff.next_delay())
                continue
            tries = 0
            took = time.monotonic() - began
            for outcome, n, reached, _ in rows:
                if outcome is not None:
                    report.adoption[outcome] = report.adoption.get(outcome, 0) + n
                after_id = reached
            if rows[0][3]:  # the walk is finished
                break
            # keep each batch (and the row locks it holds) short, and the walk quick
            if took > ADOPT_TARGET_SECONDS:
                batch = max(50, batch // 2)
            elif took < ADOPT_TARGET_SECONDS / 4:
                batch = min(ADOPT_BATCH_MAX, batch * 2)
            if time.monotonic() - last_log > 2:
                last_log = time.monotonic()
                walked = sum(report.adoption.values())
                self.log(
                    f"migrate: adopting: {walked} row(s) walked in this run, up to id "
                    f"{after_id} of {last_id} ({min(100, 100 * after_id // max(last_id, 1))} %)"
                )
        conn.execute("RESET lock_timeout")

    def _validate(self, conn: psycopg.Connection, report: Report) -> None:
        """Validate the state CHECKs added NOT VALID: a scan that blocks no reader or writer
        (SHARE UPDATE EXCLUSIVE)."""
        for (name,) in conn.execute(self.q["migrate_not_valid"]).fetchall():
            self.log(f"migrate: validating {name}")
            self._psql(
                'ALTER TABLE public.study_questions VALIDATE CONSTRAINT :"constraint";\n',
                {"constraint": name},
                what=f"validating {name}",
            )
            report.validated.append(name)

    def _schedule_cron(self, variables: dict[str, str], report: Report) -> None:
        app_db, cron_db = variables["app_db"], variables["cron_db"]
        job = f"study_embed_tick:{app_db}"
        cron_url = self.url if cron_db == app_db else _with_dbname(self.url, cron_db)
        try:
            with psycopg.connect(cron_url, autocommit=True) as cconn:
                has_ext = cconn.execute(self.q["migrate_has_pg_cron"]).fetchone()
                if has_ext:
                    row = cconn.execute(
                        self.q["migrate_tick_scheduled"], {"job": job, "app_db": app_db}
                    ).fetchone()
                    if row:
                        report.cron = "up to date"
                        return
        except psycopg.OperationalError as e:
            raise MigrationError(
                f"pg_cron lives in database {cron_db!r} (cron.database_name) and migrate could not "
                f"connect to it to schedule the tick: {e}. Grant this user access to it, or pass "
                "--no-cron and schedule `SELECT study_embed.tick()` every minute yourself."
            ) from e
        self.log(f"migrate: scheduling {job} in pg_cron (database {cron_db})")
        self._psql(
            (self.db_dir / "cron.sql").read_text(),
            {"app_db": app_db},
            url=cron_url,
            what="the pg_cron schedule",
        )
        report.cron = "scheduled"

    def uninstall(self) -> str:
        """Remove what study-embed added to the database (db/uninstall.sql) and its pg_cron
        job; the app's tables, the seed's embedding columns, their values and the HNSW index
        stay.  Refuses, changing nothing, when an object of the app depends on study-embed.
        The roles are cluster-wide (other databases may use them): they stay."""
        with self._locked("study-embed uninstall") as conn:
            installed = conn.execute(self.q["migrate_installed"]).fetchone()
            if not (installed and installed[0]):
                return "uninstall: study-embed is not installed in this database"
            self.log("uninstall: removing study-embed's schema, triggers and columns")
            self._psql((self.db_dir / "uninstall.sql").read_text(), {}, what="db/uninstall.sql")
            cron = self._unschedule_cron(conn) if self.cron else "no pg_cron job"
        return (
            "uninstall: removed the study_embed schema, its triggers, the pipeline's columns "
            f"and CHECKs of study_questions; {cron}. Kept: the app's tables, embedding, "
            "embedding_status, embedding_updated_at, embedding_model, their values and the "
            "HNSW index; the roles study_embed_pipeline, study_embed_listener and "
            "study_embed_app (cluster-wide: DROP ROLE them once no database uses them)."
        )

    def generation(
        self, step: str, *, model: str = "", dimension: int = 0, force: bool = False
    ) -> None:
        """A step of a model change (046_generations.sql): `begin` the shadow generation of
        `model`, `switch` it with the served one, or `drop` it.  One transaction: the step's
        DDL, then db/idempotent again, so that every definition that binds columns when it is
        created binds the slots as they now are.  (A switch recounts the statuses itself: the
        served slot's are another generation's after it.)"""
        calls = {
            "begin": "SELECT study_embed.begin_generation(:'model', :'dimension'::integer);\n",
            "switch": "SELECT study_embed.switch_generation(:'force'::boolean);\n",
            "drop": "SELECT study_embed.drop_generation();\n",
        }
        # Each step's DDL takes study_questions ACCESS EXCLUSIVE, and an autovacuum of the
        # table holds it off: PostgreSQL cancels the autovacuum only for a lock that has waited
        # deadlock_timeout (1 s), which LOCK_TIMEOUT would end first, again and again.  So the
        # step first waits for SHARE UPDATE EXCLUSIVE, which queues no app statement behind it
        # (reads and writes do not conflict with it) and does outlast deadlock_timeout; then
        # the short wait for the rest, as every migration.
        prelock = (
            f"SET LOCAL lock_timeout = '{PRELOCK_TIMEOUT}';\n"
            "LOCK TABLE public.study_questions IN SHARE UPDATE EXCLUSIVE MODE;\n"
            f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}';\n"
        )
        try:
            with self._locked(f"study-embed model {step}") as conn:
                self._generation(conn, prelock + calls[step], step, model, dimension, force)
        except MigrationError as e:
            raise MigrationError(_said(str(e))) from None

    def _generation(
        self,
        conn: psycopg.Connection,
        call: str,
        step: str,
        model: str,
        dimension: int,
        force: bool,
    ) -> None:
        ledger = self._ledger(conn)
        schema = self._vector_schema(conn)
        script, digest = self._idempotent(schema)
        migrations = {f"migrations/{p.name}" for p in (self.db_dir / "migrations").glob("*.sql")}
        if ledger.get(IDEMPOTENT_LEDGER_NAME) != digest or not migrations <= ledger.keys():
            raise MigrationError(
                "the database's study-embed is not this version's: run `study-embed migrate` first"
            )
        if step == "switch":
            self._before_switch(conn, schema, force)
        self._psql(
            call + script,
            {
                "vector_schema": schema,
                "model": model,
                "dimension": str(dimension),
                "force": "on" if force else "off",
            },
            what=f"model {step}",
        )

    def _before_switch(self, conn: psycopg.Connection, schema: str, force: bool) -> None:
        """The next generation's HNSW index, built now (begin makes none: a graph insert per
        vector written, and a second into the served graph, would slow the backfill more than
        twofold); CONCURRENTLY: reads and writes go on.  Unless forced, a switch that would be
        refused for rows still missing is refused first, before the build."""
        rows = conn.execute(self.q["migrate_next_generation"]).fetchall()
        if not rows:
            return  # the switch itself says there is no change in progress
        model, missing, index = rows[0]
        try:
            conn.execute(
                self.q["migrate_refuse_switch"],
                {"model": model, "missing": missing, "force": force},
            )
        except psycopg.errors.ObjectNotInPrerequisiteState as e:
            raise MigrationError(f"{e.diag.message_primary}. {e.diag.message_hint}") from None
        if index == "valid":
            return
        if index == "invalid":  # a build that was interrupted
            conn.execute(sql.SQL("DROP INDEX CONCURRENTLY public.{}").format(sql.Identifier(HNSW)))
        self.log(f"switch: building the HNSW index of {model} (CREATE INDEX CONCURRENTLY)")
        done = threading.Event()
        watcher = threading.Thread(target=self._index_progress, args=(done,), daemon=True)
        watcher.start()
        t0 = time.monotonic()
        try:
            conn.execute(
                sql.SQL(
                    "CREATE INDEX CONCURRENTLY {} ON public.study_questions USING hnsw"
                    " (embedding_shadow {}.vector_cosine_ops)"
                    " WHERE deleted_at IS NULL AND embedding_shadow IS NOT NULL"
                ).format(sql.Identifier(HNSW), sql.Identifier(schema))
            )
        except psycopg.Error as e:
            raise MigrationError(f"switch: building the HNSW index failed: {e}") from e
        finally:
            done.set()
            watcher.join()
        self.log(f"switch: built the HNSW index of {model} in {time.monotonic() - t0:.1f} s")

    def _index_progress(self, done: threading.Event) -> None:
        """Log the index build's progress every PROGRESS_EVERY seconds (a long build)."""
        with contextlib.suppress(psycopg.Error), psycopg.connect(self.url, autocommit=True) as c:
            while not done.wait(PROGRESS_EVERY):
                row = c.execute(self.q["migrate_index_progress"]).fetchone()
                if row:
                    phase, done_n, total = row
                    self.log(f"switch: building the HNSW index: {phase}, {done_n} of {total}")

    def _unschedule_cron(self, conn: psycopg.Connection) -> str:
        app_db = conn.info.dbname
        row = conn.execute(self.q["migrate_cron_database"]).fetchone()
        cron_db = row[0] if row else None
        if not cron_db:
            return "pg_cron is not loaded: no job to remove"
        cron_url = self.url if cron_db == app_db else _with_dbname(self.url, cron_db)
        with psycopg.connect(cron_url, autocommit=True) as cconn:
            if not cconn.execute(self.q["migrate_has_pg_cron"]).fetchone():
                return "no pg_cron job to remove"
            removed = cconn.execute(
                self.q["migrate_unschedule_tick"], {"job": f"study_embed_tick:{app_db}"}
            ).fetchall()
        return "removed its pg_cron job" if removed else "no pg_cron job to remove"

    @contextmanager
    def _locked(self, app_name: str) -> Iterator[psycopg.Connection]:
        """A connection holding the migrators' advisory lock (one migrator at a time)."""
        try:
            conn = psycopg.connect(self.url, autocommit=True, application_name=app_name)
        except psycopg.OperationalError as e:
            raise MigrationError(f"cannot connect to the database: {e}".strip()) from e
        with conn:
            lock = {"key": LOCK_KEY}
            got = conn.execute(self.q["migrate_try_lock"], lock).fetchone()
            if not (got and got[0]):
                self.log("migrate: another migrator holds the lock; waiting for it")
                conn.execute(self.q["migrate_lock"], lock)
            try:
                yield conn
            finally:
                conn.execute(self.q["migrate_unlock"], lock)

    def run(self, *, force: bool = False) -> Report:
        report = Report()
        with self._locked("study-embed migrate") as conn:
            variables = self._preflight(conn)
            ledger = self._ledger(conn)
            self._apply_migrations(ledger, variables, report)
            variables["vector_schema"] = self._vector_schema(conn)
            self._apply_idempotent(ledger, variables, report, force)
            self._adopt(conn, report)
            self._validate(conn, report)
            if self.cron:
                self._schedule_cron(variables, report)
        return report


def _said(psql_error: str) -> str:
    """What a function's RAISE said, and its hint, without psql's context lines."""
    kept = []
    for line in psql_error.splitlines():
        if m := re.match(r"^(?:psql:\S+ )?ERROR:\s+(?:[0-9A-Z]{5}: )?(.*)", line):
            kept.append(m.group(1))
        elif line.startswith("HINT:"):
            kept.append(line[len("HINT:") :].strip())
    return ". ".join(k.rstrip(".") for k in kept) + "." if kept else psql_error


def _quote_psql(path: Path) -> str:
    return "'" + str(path).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _with_dbname(url: str, dbname: str) -> str:
    """The same connection parameters, another database."""
    params = psycopg.conninfo.conninfo_to_dict(url)
    params["dbname"] = dbname
    return psycopg.conninfo.make_conninfo("", **params)


__all__ = ["Migrator", "MigrationError", "Report"]
