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

-- name: channel
SELECT study_embed.channel();

-- name: search
SELECT id, similarity, question_text
FROM study_embed.search_questions(%(user_id)s, %(query)s, %(k)s, %(topic_id)s);

-- name: find_duplicates
SELECT id, similarity, question_text
FROM study_embed.find_duplicates(%(user_id)s, %(query)s, %(threshold)s::real);

-- name: render
SELECT study_embed.render_question(%(question_text)s, %(choice_1)s, %(choice_2)s, %(choice_3)s,
                                   %(choice_4)s);
