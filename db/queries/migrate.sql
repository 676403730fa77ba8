-- migrate.sql — the migrator's statements (study_embed.migrate; the migration files themselves
-- run through psql).
-- Loaded by study_embed.sqlfiles.queries(); one statement under each `-- name:` header,
-- named parameters.

-- name: migrate_try_lock
SELECT pg_try_advisory_lock(%(key)s);

-- name: migrate_lock
SELECT pg_advisory_lock(%(key)s);

-- name: migrate_unlock
SELECT pg_advisory_unlock(%(key)s);

-- name: migrate_pgvector
SELECT default_version, installed_version FROM pg_available_extensions WHERE name = 'vector';

-- name: migrate_cron_database
-- pg_settings lists cron.* only when the library is loaded (a value in postgresql.conf alone
-- is a mere placeholder)
SELECT setting FROM pg_settings WHERE name = 'cron.database_name';

-- name: migrate_embedding_dimension
SELECT a.atttypmod FROM pg_attribute a
WHERE a.attrelid = to_regclass('public.study_questions') AND a.attname = 'embedding'
  AND NOT a.attisdropped;

-- name: migrate_ledger
CREATE SCHEMA IF NOT EXISTS study_embed;
COMMENT ON SCHEMA study_embed IS 'study-embed: the embedding pipeline of public.study_questions';
CREATE TABLE IF NOT EXISTS study_embed.schema_migrations (
    filename text PRIMARY KEY, sha256 text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());

-- name: migrate_applied
SELECT filename, sha256 FROM study_embed.schema_migrations;

-- name: migrate_vector_schema
-- pgvector's schema, and whether every role may create objects in it
SELECT n.nspname,
       EXISTS (SELECT 1 FROM aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
               WHERE a.grantee = 0 AND a.privilege_type = 'CREATE')
FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
WHERE e.extname = 'vector';

-- name: migrate_has_pg_cron
SELECT 1 FROM pg_extension WHERE extname = 'pg_cron';

-- name: migrate_tick_scheduled
SELECT 1 FROM cron.job
WHERE jobname = %(job)s AND schedule = '* * * * *' AND command = 'SELECT study_embed.tick()'
  AND database = %(app_db)s AND active;

-- name: migrate_adoption
SELECT model, reembed, after_id, started_at IS NOT NULL AS started, finished_at IS NOT NULL AS finished
FROM study_embed.adoption;

-- name: migrate_adoption_models
-- the models that made the ready vectors the adoption would keep (rows with no bookkeeping);
-- read once, before an adoption starts
SELECT coalesce(q.embedding_model, ''), count(*)
FROM public.study_questions q
WHERE q.embedding_status = 'ready' AND q.embedding IS NOT NULL AND study_embed._from_before(q)
GROUP BY 1 ORDER BY 2 DESC;

-- name: migrate_serve_model
-- an adoption that has not started decides the served model: the one whose vectors it keeps
-- (or, re-embedding all, makes)
UPDATE study_embed.generations SET model = %(model)s, since = now()
WHERE slot = 'served' AND model <> %(model)s
  AND NOT EXISTS (SELECT 1 FROM study_embed.generations g WHERE g.slot = 'shadow');

-- name: migrate_adopt
SELECT outcome, n, after_id, finished FROM study_embed.adopt(%(model)s, %(reembed)s, %(batch_size)s);

-- name: migrate_adoption_outcomes
SELECT outcome, n FROM study_embed.adoption_outcomes ORDER BY outcome = 'adopted' DESC, n DESC, outcome;

-- name: migrate_not_valid
-- the state CHECKs that are still to be validated (added NOT VALID, 0001 and 0005)
SELECT conname FROM pg_constraint
WHERE conrelid = 'public.study_questions'::regclass AND contype = 'c' AND NOT convalidated
  AND conname LIKE 'study\_questions\_embedding\_%'
ORDER BY conname;

-- name: migrate_installed
SELECT to_regnamespace('study_embed') IS NOT NULL;

-- name: migrate_unschedule_tick
SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname = %(job)s;

-- name: migrate_last_id
SELECT max(id) FROM public.study_questions;

-- name: migrate_next_generation
-- the other generation's model, its live rows not ready, and its HNSW index: valid, invalid (a
-- build interrupted) or missing; no row when no model change is in progress
SELECT g.model, s.live - s.ready,
       CASE (SELECT i.indisvalid FROM pg_index i
             WHERE i.indexrelid = to_regclass('public.study_questions_embedding_shadow_hnsw'))
           WHEN true THEN 'valid' WHEN false THEN 'invalid' ELSE 'missing' END
FROM study_embed.generations g
JOIN study_embed.generation_status() s ON s.slot = g.slot
WHERE g.slot = 'shadow';

-- name: migrate_refuse_switch
SELECT study_embed._refuse_switch(%(model)s, %(missing)s, %(force)s);

-- name: migrate_index_progress
SELECT p.phase, p.tuples_done, p.tuples_total
FROM pg_stat_progress_create_index p
WHERE p.relid = 'public.study_questions'::regclass AND p.datid = (
    SELECT d.oid FROM pg_database d WHERE d.datname = current_database());
