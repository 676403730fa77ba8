-- queries.sql — every statement the Python code runs, under `-- name:` headers, with named
-- parameters.  Loaded once by study_embed.sqlfiles.queries().  The listener calls the queue API
-- functions and nothing else.

-- name: claim
SELECT id, claim_token, body
FROM study_embed.claim(%(batch_size)s, make_interval(secs => %(lease_seconds)s));

-- name: complete
SELECT id FROM study_embed.complete(%(ids)s, %(claim_tokens)s, %(embeddings)b, %(model)s) AS id;

-- name: fail
SELECT id FROM study_embed.fail(%(ids)s, %(claim_tokens)s, %(errors)s, %(retryable)s) AS id;

-- name: release
SELECT id FROM study_embed.release(%(ids)s, %(claim_tokens)s,
                                   make_interval(secs => %(retry_in_seconds)s), %(reason)s) AS id;

-- name: detect_duplicates
SELECT study_embed.detect_duplicates(make_interval(secs => %(budget_seconds)s));

-- name: compact_counts
SELECT study_embed.compact_counts();

-- name: listener_sleep
SELECT study_embed.listener_sleep(%(wait_ms)s);

-- name: listener_wake
SELECT study_embed.listener_wake();

-- name: embedding_dimension
SELECT study_embed.embedding_dimension();

-- name: requeue_model
SELECT requeued, next_after_id FROM study_embed.requeue_model(%(model)s, %(after_id)s);

-- name: status
SELECT status, live, deleted, oldest_waiting FROM study_embed.status;

-- name: failures
SELECT id, attempts, last_error, next_retry_at, waiting_for_edit
FROM study_embed.failures
ORDER BY waiting_for_edit DESC, next_retry_at DESC NULLS FIRST, id DESC
LIMIT %(limit)s;

-- name: waiting
SELECT coalesce(sum(live), 0)::bigint FROM study_embed.status WHERE status <> 'ready';

-- name: schema_ready
SELECT to_regtype('vector') IS NOT NULL,
       to_regprocedure('study_embed.claim(integer, interval)') IS NOT NULL;

-- name: ping
SELECT 1;

-- name: channel
SELECT study_embed.channel();

-- name: search
SELECT id, similarity, question_text
FROM study_embed.search_questions(%(user_id)s, %(query)s, %(k)s, %(topic_id)s);

-- name: search_hybrid
SELECT id, similarity, question_text
FROM study_embed.search_questions_hybrid(%(user_id)s, %(query)s, %(text)s, %(k)s, %(topic_id)s);

-- name: find_duplicates
SELECT id, similarity, question_text
FROM study_embed.find_duplicates(%(user_id)s, %(query)s, %(threshold)s::real, %(answer)s);

-- name: render
SELECT study_embed.render_question(%(question_text)s, %(choice_1)s, %(choice_2)s, %(choice_3)s,
                                   %(choice_4)s);

-- ---------------------------------------------------------------------------- the migrator
-- (study_embed.migrate; the migration files themselves run through psql)

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
