-- 045_adoption.sql — re-runnable.  Adopting a bank embedded before study-embed (0007_adoption.sql).
--
-- A row from before study-embed has none of the pipeline's bookkeeping.  `migrate` walks the
-- table once, in id order, a bounded batch per transaction (study_embed.adopt()), and for each
-- such row:
--   ready, with a vector, made by the configured model   adopted: it stays ready, unwritten;
--                                                         the hash of its current text goes to
--                                                         study_embed.adopted_source
--   ready by another model (or none with a vector)       stale: re-embedded, its vector served
--                                                         until then
--   ready without a vector                               none
--   none, stale, pending, failed                         queued with their status
--                                                         (_queued_from_before, 010)
-- (A vector's dimension is the column's: vector(n) refuses any other, and `migrate` refuses an
-- EMBEDDING_DIM that is not the column's.)
-- With `reembed`, no vector is kept: every row is queued (stale, or none without a vector).
-- Rows study-embed already wrote are left alone ("already study-embed's").
--
-- The trust: the old worker marked a row stale on every edit of its text (the seed's guarantee,
-- "ready ⇒ current"), and from the moment study-embed's triggers are installed every edit queues
-- the row; so a ready row's vector is of its current text, and the hash recorded is the hash
-- of the text it came from.

-- A row from before study-embed: none of the pipeline's bookkeeping.  Every row study-embed has
-- written is ready with its source hash (in the row, or beside it once adopted), or carries a
-- queue time, a claim or an error.  (The trigger study_embed_queue_unadopted, 010, tests the
-- part of this that a write must fix, inline in its WHEN.)
-- (A quoted body, resolved when it runs: a SQL-standard body would bind the table's row type,
-- and PostgreSQL then refuses every ALTER TABLE study_questions ADD COLUMN, the app's own.)
CREATE OR REPLACE FUNCTION study_embed._from_before(q public.study_questions)
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT q.embedding_source_sha256 IS NULL AND q.embedding_queued_at IS NULL
           AND q.embedding_due_at IS NULL AND q.embedding_claim_token IS NULL
           AND q.embedding_last_error IS NULL
           AND NOT EXISTS (SELECT 1 FROM study_embed.adopted_source a
                           WHERE a.question_id = q.id)
$$;

CREATE OR REPLACE FUNCTION study_embed.adopt(model text, reembed boolean DEFAULT false,
                                             batch_size integer DEFAULT 1000)
RETURNS TABLE (outcome text, n bigint, after_id bigint, finished boolean)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    walk study_embed.adoption;
    last_id bigint;
    ids bigint[];
    outcomes text[];
    was text[];
    now_is text[];
    moved_was text[];
    moved_now text[];
    moved_deleted boolean[];
BEGIN
    PERFORM study_embed._check_batch_size('adopt', batch_size, 100000);
    IF model IS NULL OR model = '' THEN
        RAISE EXCEPTION 'adopt: model must be given (the model whose vectors are kept)'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- one adopter at a time; the cursor moves with the batch
    SELECT * INTO walk FROM study_embed.adoption FOR UPDATE;
    IF walk.finished_at IS NOT NULL THEN
        RETURN QUERY SELECT NULL::text, 0::bigint, walk.after_id, true;
        RETURN;
    END IF;
    IF walk.model IS NULL THEN
        UPDATE study_embed.adoption a
        SET model = adopt.model, reembed = adopt.reembed, started_at = now();
    ELSIF walk.model IS DISTINCT FROM adopt.model OR walk.reembed IS DISTINCT FROM adopt.reembed THEN
        RAISE EXCEPTION 'adopt: the adoption under way keeps the vectors of % (re-embed all: %), '
                        'not of % (re-embed all: %)', walk.model, walk.reembed, adopt.model, adopt.reembed
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Finish it with the same settings; rows it has passed are done.';
    END IF;

    SELECT max(w.id) INTO last_id
    FROM (SELECT q.id FROM public.study_questions q WHERE q.id > walk.after_id
          ORDER BY q.id LIMIT batch_size) w;
    IF last_id IS NULL THEN
        UPDATE study_embed.adoption a SET finished_at = now();
        RETURN QUERY SELECT NULL::text, 0::bigint, walk.after_id, true;
        RETURN;
    END IF;

    -- what each row of the batch is, and the status a queued one gets
    SELECT array_agg(c.id ORDER BY c.id), array_agg(c.outcome ORDER BY c.id),
           array_agg(c.embedding_status ORDER BY c.id),
           array_agg(CASE WHEN reembed OR c.embedding_status NOT IN ('stale', 'pending', 'failed')
                          THEN CASE WHEN c.has_vector THEN 'stale' ELSE 'none' END
                          ELSE c.embedding_status END ORDER BY c.id)
    INTO ids, outcomes, was, now_is
    FROM (
        SELECT q.id, q.embedding_status::text AS embedding_status,
               q.embedding IS NOT NULL AS has_vector,
            CASE
                WHEN NOT study_embed._from_before(q) THEN 'already study-embed''s'
                WHEN reembed THEN 'queued: re-embed of every row asked for'
                WHEN q.embedding_status = 'ready' THEN CASE
                    WHEN q.embedding IS NULL THEN 'queued: ready without a vector'
                    WHEN q.embedding_model IS DISTINCT FROM adopt.model
                        THEN format('queued: ready, made by %s', coalesce(
                                 quote_literal(q.embedding_model), 'an unnamed model'))
                    ELSE 'adopted' END
                WHEN q.embedding_status = 'none' AND q.embedding IS NOT NULL
                    THEN 'queued: none, with a vector'
                WHEN q.embedding_status IN ('none', 'stale', 'pending', 'failed')
                    THEN 'queued: ' || q.embedding_status
                ELSE format('queued: status %s', quote_literal(q.embedding_status)) END AS outcome
        FROM public.study_questions q
        WHERE q.id > walk.after_id AND q.id <= last_id
    ) c;

    INSERT INTO study_embed.adopted_source (question_id, source_sha256)
    SELECT q.id, study_embed.text_sha256(study_embed.render_question(
               q.question_text, q.choice_1, q.choice_2, q.choice_3, q.choice_4))
    FROM unnest(ids, outcomes) AS b(id, outcome)
    JOIN public.study_questions q ON q.id = b.id
    WHERE b.outcome = 'adopted'
    ON CONFLICT ON CONSTRAINT adopted_source_pkey DO NOTHING;

    -- queued: one write per row, which re-checks (EvalPlanQual) that no edit has queued it
    -- meanwhile (an edit's triggers give it its bookkeeping, 010)
    PERFORM study_embed._set_actor('adopt');
    WITH moved AS (
        UPDATE public.study_questions q
        SET (embedding_status, embedding_claim_token, embedding_due_at, embedding_queued_at,
             embedding_attempts, embedding_last_error) =
            (SELECT f.embedding_status, f.embedding_claim_token, f.embedding_due_at,
                    f.embedding_queued_at, f.embedding_attempts, f.embedding_last_error
             FROM study_embed._queued_from_before(q, b.now_is) f)
        FROM unnest(ids, outcomes, was, now_is) AS b(id, outcome, was, now_is)
        WHERE q.id = b.id AND b.outcome LIKE 'queued: %'
          AND study_embed._from_before(q)
        RETURNING b.was, b.now_is, q.deleted_at IS NOT NULL AS deleted
    )
    SELECT array_agg(m.was), array_agg(m.now_is), array_agg(m.deleted)
    INTO moved_was, moved_now, moved_deleted FROM moved m;
    PERFORM study_embed._set_actor(NULL);
    PERFORM study_embed._count_moves(moved_was, moved_deleted, moved_now, moved_deleted);

    INSERT INTO study_embed.adoption_outcomes AS o (outcome, n)
    SELECT b.outcome, count(*) FROM unnest(outcomes) AS b(outcome) GROUP BY b.outcome
    ON CONFLICT ON CONSTRAINT adoption_outcomes_pkey DO UPDATE SET n = o.n + excluded.n;
    UPDATE study_embed.adoption a SET after_id = last_id;
    IF moved_was IS NOT NULL THEN
        PERFORM study_embed._wake('adopt');
    END IF;
    RETURN QUERY
    SELECT b.outcome, count(*), last_id, false FROM unnest(outcomes) AS b(outcome)
    GROUP BY b.outcome;
END;
$$;
COMMENT ON FUNCTION study_embed.adopt(text, boolean, integer) IS
    'Adopt the next batch of rows written before study-embed (keep the ready vectors of model, '
    'queue the rest; with reembed, queue all); returns the outcomes, the id reached and whether '
    'the walk is finished.  Called by `migrate` until finished.';
