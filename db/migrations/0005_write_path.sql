-- 0005_write_path.sql — run once.  The app's writes cost what they cost on the seed's table.
--
-- An UPDATE is HOT (no new index entry at all, in particular no HNSW graph insert of a vector
-- that did not change) only when no column that any index uses changes and the new row version
-- fits on the same heap page.  Two changes make that possible (BENCHMARKS.md, "writers"):
--
-- 1. The vector goes back to pgvector's default storage (EXTERNAL, in TOAST).  Kept in the row
--    (0004) a 1024-dim vector is 4,104 bytes: one row fills half a page, no second version ever
--    fits, and no update of such a row can be HOT.  In TOAST the row is a few hundred bytes, and
--    an unchanged TOASTed value is not rewritten by an UPDATE.  fillfactor leaves each page room
--    for updated versions.  (Rows written while 0004 was in force keep their inline copy until
--    they are next embedded.)
--
-- 2. The queue is found through embedding_queued_at alone.  The old queue indexes were keyed on
--    embedding_due_at and filtered on embedding_status, which every claim, fail and release
--    changes, so none of them could be HOT, and each one re-inserted the row's old vector into
--    the HNSW graph.  embedding_queued_at is set when a content version starts waiting and
--    cleared when its embedding lands; claim, fail, release and retries do not touch it.  A row
--    whose attempts are used up leaves the queue (parked, embedding_queued_at NULL) until an
--    edit or study_embed.retry_failed() brings it back.
--
-- Queue rows get their bookkeeping from column defaults, so that a plain INSERT needs no
-- trigger function at all (the guard fires only when a pipeline column is given).
--
-- replaces sha256: cfc00be679de24a446ea77ccbefa23fa720f5b9fead490019628aad0decc792b
--   The earlier version also rewrote, in this transaction, the rows of an adopted bank that had
--   no bookkeeping yet, and validated the CHECK at once.  Those rows are now left to `migrate`'s
--   batched adoption (045_adoption.sql) and the CHECK is validated after it.  On a database
--   that ran the earlier version no such row existed (0001 had queued them all).

ALTER TABLE public.study_questions ALTER COLUMN embedding SET STORAGE EXTERNAL;
ALTER TABLE public.study_questions SET (fillfactor = 85);

ALTER TABLE public.study_questions
    ALTER COLUMN embedding_due_at SET DEFAULT now(),
    ALTER COLUMN embedding_queued_at SET DEFAULT now();

-- Every waiting row carries its queued_at (none and stale rows always did); failed rows whose
-- attempts are used up are parked.  (Rows from before study-embed, with no bookkeeping at all,
-- are the adoption's.)
UPDATE public.study_questions
SET embedding_queued_at = CASE WHEN embedding_status = 'failed' AND embedding_due_at IS NULL
                               THEN NULL ELSE coalesce(embedding_queued_at, now()) END
WHERE embedding_status <> 'ready'
  AND (embedding_queued_at IS NULL) <> (embedding_status = 'failed' AND embedding_due_at IS NULL)
  AND (embedding_due_at IS NOT NULL OR embedding_queued_at IS NOT NULL);

DROP INDEX IF EXISTS public.study_questions_embedding_queue;
DROP INDEX IF EXISTS public.study_questions_embedding_waiting;

-- The queue: waiting rows only, oldest content version first.  study_embed.claim() repeats this
-- predicate; the claimable test (embedding_due_at) is read from the heap.
CREATE INDEX study_questions_embedding_queue
    ON public.study_questions (embedding_queued_at, id)
    WHERE deleted_at IS NULL AND embedding_queued_at IS NOT NULL;

ALTER TABLE public.study_questions
    ADD CONSTRAINT study_questions_embedding_queued_check
        CHECK (CASE embedding_status WHEN 'ready' THEN embedding_queued_at IS NULL
                                     WHEN 'failed' THEN true          -- NULL: parked
                                     ELSE embedding_queued_at IS NOT NULL END) NOT VALID;

-- A bound on the retry budget (the backoff's exponent is also capped in fail()).
UPDATE study_embed.settings SET max_attempts = least(max_attempts, 100);
ALTER TABLE study_embed.settings
    ADD CONSTRAINT settings_max_attempts_range CHECK (max_attempts BETWEEN 1 AND 100);
