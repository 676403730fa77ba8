-- 050_status.sql — re-runnable.  What an operator looks at: exact counts, the oldest waiting
-- row, the failures.  Cheap on a table of millions: counts come from study_embed.status_counts
-- (030_counts.sql), the rest from the partial queue index.  (The views are dropped and
-- re-created: nothing depends on them.)

DROP VIEW IF EXISTS study_embed.status;
CREATE VIEW study_embed.status AS
WITH counts AS (
    SELECT status,
           coalesce(sum(n) FILTER (WHERE NOT deleted), 0)::bigint AS live,
           coalesce(sum(n) FILTER (WHERE deleted), 0)::bigint AS deleted
    FROM study_embed.status_counts GROUP BY status
)
SELECT s.status,
       coalesce(c.live, 0) AS live,
       coalesce(c.deleted, 0) AS deleted,
       -- the queue index, oldest first (parked failures wait for an edit, not in the queue)
       CASE WHEN s.status <> 'ready' THEN (
           SELECT now() - q.embedding_queued_at FROM public.study_questions q
           WHERE q.deleted_at IS NULL AND q.embedding_queued_at IS NOT NULL
             AND q.embedding_status = s.status
           ORDER BY q.embedding_queued_at LIMIT 1) END AS oldest_waiting
FROM (VALUES ('none', 1), ('stale', 2), ('pending', 3), ('failed', 4), ('ready', 5)) AS s(status, ord)
LEFT JOIN counts c ON c.status = s.status
ORDER BY s.ord;
COMMENT ON VIEW study_embed.status IS
    'Exact row counts per embedding status (live and soft-deleted) and the age of the oldest '
    'row waiting in each queue status.';

DROP VIEW IF EXISTS study_embed.failures;
CREATE VIEW study_embed.failures AS
SELECT q.id, q.embedding_attempts AS attempts, q.embedding_last_error AS last_error,
       q.embedding_due_at AS next_retry_at,
       q.embedding_due_at IS NULL AS waiting_for_edit
FROM public.study_questions q
WHERE q.deleted_at IS NULL AND q.embedding_status = 'failed';
-- (Failures waiting for retry are in the queue index; parked ones, attempts used up, are not: a
-- listing of failures reads the table.  Their count is in study_embed.status.)
COMMENT ON VIEW study_embed.failures IS
    'Live rows whose last embedding attempt failed, with the error; waiting_for_edit when their '
    'attempts are used up (study_embed.retry_failed() queues them again).';
