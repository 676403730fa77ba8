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
