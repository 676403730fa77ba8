-- queue.sql — the listener's statements (study_embed.queue.QueueClient): the queue API
-- functions and nothing else.
-- Loaded by study_embed.sqlfiles.queries(); one statement under each `-- name:` header,
-- named parameters.

-- name: claim
SELECT id, claim_token, body
FROM study_embed.claim(%(batch_size)s, make_interval(secs => %(lease_seconds)s));

-- name: complete
-- (the batch's arrays in binary: psycopg's text form of a list checks every element for quoting)
SELECT id FROM study_embed.complete(%(ids)b, %(claim_tokens)b, %(embeddings)b, %(model)s) AS id;

-- name: fail
SELECT id FROM study_embed.fail(%(ids)s, %(claim_tokens)s, %(errors)s, %(retryable)s) AS id;

-- name: release
SELECT id FROM study_embed.release(%(ids)s, %(claim_tokens)s,
                                   make_interval(secs => %(retry_in_seconds)s), %(reason)s) AS id;

-- name: claim_shadow
SELECT id, claim_token, body
FROM study_embed.claim_shadow(%(batch_size)s, make_interval(secs => %(lease_seconds)s));

-- name: complete_shadow
SELECT id FROM study_embed.complete_shadow(%(ids)b, %(claim_tokens)b, %(embeddings)b, %(model)s) AS id;

-- name: fail_shadow
SELECT id FROM study_embed.fail_shadow(%(ids)s, %(claim_tokens)s, %(errors)s, %(retryable)s) AS id;

-- name: release_shadow
SELECT id FROM study_embed.release_shadow(%(ids)s, %(claim_tokens)s,
                                          make_interval(secs => %(retry_in_seconds)s),
                                          %(reason)s) AS id;

-- name: generations
-- which model each slot holds: cheap, read before every drain
SELECT slot, model, dimension FROM study_embed.generation_models();

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

-- name: channel
SELECT study_embed.channel();

-- name: requeue_model
SELECT requeued, next_after_id FROM study_embed.requeue_model(%(model)s, %(after_id)s);

-- name: failures
SELECT id, attempts, last_error, next_retry_at, waiting_for_edit
FROM study_embed.failures
ORDER BY waiting_for_edit DESC, next_retry_at DESC NULLS FIRST, id DESC
LIMIT %(limit)s;

-- name: waiting
SELECT coalesce(sum(live), 0)::bigint FROM study_embed.status WHERE status <> 'ready';
