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

-- ------------------------------------------------------------- the app-facing reads (bank.py)
-- The tenant-safe functions of study_embed_app, for `study-embed search`, `check-duplicate` and
-- the UI.  Every one takes the user explicitly and returns nothing of another user's questions.

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

-- name: bank_role
-- What the connected role may do (the UI refuses to run as an owner).  pg_has_role with
-- MEMBER: membership whether or not its rights are inherited.
SELECT current_user::text,
       r.rolsuper,
       pg_has_role(current_user, 'study_embed_pipeline', 'MEMBER'),
       pg_has_role(current_user, c.relowner, 'MEMBER'),
       pg_has_role(current_user, 'study_embed_app', 'USAGE'),
       has_table_privilege('public.users', 'SELECT')
           AND has_table_privilege('public.study_topics', 'SELECT')
           AND has_table_privilege('public.study_questions', 'SELECT')
           AND has_table_privilege('public.study_question_attempts', 'SELECT'),
       has_table_privilege('public.study_questions', 'INSERT, UPDATE, DELETE, TRUNCATE')
FROM pg_roles r, pg_class c
WHERE r.rolname = current_user AND c.oid = 'public.study_questions'::regclass;

-- name: bank_users
-- Users (all, or the one asked for) with the size of their bank.  The app's users table may
-- have a name or only an e-mail: read through to_jsonb so that either (or neither) works.
SELECT u.id,
       coalesce(to_jsonb(u) ->> 'name', to_jsonb(u) ->> 'email'),
       n.live, n.ready
FROM (SELECT * FROM public.users
      WHERE %(user_id)s::bigint IS NULL OR id = %(user_id)s::bigint
      ORDER BY id LIMIT %(limit)s) u
CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE q.deleted_at IS NULL) AS live,
           count(*) FILTER (WHERE q.deleted_at IS NULL AND q.embedding_status = 'ready') AS ready
    FROM public.study_questions q WHERE q.user_id = u.id) n
ORDER BY u.id;

-- name: bank_question
-- One live question of one user (nothing for another user's id).
SELECT q.id, q.study_topic_id, to_jsonb(t) ->> 'name', q.question_text,
       q.choice_1, q.choice_2, q.choice_3, q.choice_4, q.correct_choice, q.explanation,
       q.embedding_status, q.embedding_model, q.embedding_updated_at
FROM public.study_questions q
LEFT JOIN public.study_topics t ON t.id = q.study_topic_id
WHERE q.id = %(question_id)s AND q.user_id = %(user_id)s AND q.deleted_at IS NULL;

-- name: bank_similar
SELECT id, similarity, question_text
FROM study_embed.similar_questions(%(user_id)s, %(question_id)s, %(k)s, %(same_topic)s);

-- name: bank_context
SELECT id, similarity, question_text, correct_choice, correct_answer, explanation,
       ai_explanation
FROM study_embed.explanation_context(%(user_id)s, %(question_id)s, %(k)s);

-- name: bank_duplicates
SELECT question_id, duplicate_of, similarity, question_text, duplicate_text
FROM study_embed.duplicate_pairs
WHERE user_id = %(user_id)s
ORDER BY similarity DESC, question_id, duplicate_of
LIMIT %(limit)s;

-- name: bank_dismiss
SELECT study_embed.dismiss_duplicate(%(user_id)s, %(question_id)s, %(duplicate_of)s);

-- name: bank_clusters
SELECT cluster, representative_id, question_id, similarity, question_text, last_wrong_at
FROM study_embed.wrong_answer_clusters(%(user_id)s, %(recent)s);

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
