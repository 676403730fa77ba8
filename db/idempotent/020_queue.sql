-- 020_queue.sql — re-runnable.  The queue API: the only functions a listener calls.
--
-- The claim commits before any model call: no transaction or row lock is held while a text is
-- embedded.  A claim hands out a fresh token per row; complete/fail/release act only while that
-- token is still the row's current one, which a content edit voids.
--
-- These functions are SECURITY DEFINER, owned by study_embed_pipeline (040_privileges.sql), so
-- that the listener role needs EXECUTE on them and no privilege on the tables, and so that the
-- state machine knows their updates for the pipeline's (010_state_machine.sql).  They name every
-- object by schema and pin search_path to pg_catalog, pg_temp.

-- The batch functions take parallel arrays: they must be of one length.
CREATE OR REPLACE FUNCTION study_embed._check_batch(fn text, names text[], lengths integer[])
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF (SELECT count(DISTINCT coalesce(l, -1)) FROM unnest(lengths) l) > 1 THEN
        RAISE EXCEPTION '%: % differ in length (%)', fn, array_to_string(names, ', '),
            array_to_string(lengths, ', ', 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END;
$$;

-- Claim up to batch_size claimable rows: none, stale, failed and due for retry, or pending with
-- an expired lease (an expired lease counts as a failed attempt).  Concurrent claimers skip each
-- other's rows (FOR UPDATE SKIP LOCKED).
CREATE OR REPLACE FUNCTION study_embed.claim(batch_size integer DEFAULT 10,
                                             lease interval DEFAULT '2 minutes')
RETURNS TABLE (id bigint, claim_token uuid, body text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    max_attempts smallint := (SELECT s.max_attempts FROM study_embed.settings s);
BEGIN
    IF batch_size IS NULL OR batch_size < 1 OR batch_size > 10000 THEN
        RAISE EXCEPTION 'claim: batch_size must be between 1 and 10000, not %', batch_size
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF lease IS NULL OR lease <= interval '0' THEN
        RAISE EXCEPTION 'claim: lease must be a positive interval, not %', lease
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM study_embed._set_actor('claim');
    RETURN QUERY
    WITH due AS (
        SELECT q.id,
               -- an expired lease whose row has used up its attempts: failed, not claimed
               q.embedding_status = 'pending' AND q.embedding_attempts + 1 >= max_attempts
                   AS exhausted
        FROM public.study_questions q
        WHERE q.deleted_at IS NULL AND q.embedding_status <> 'ready'   -- the queue index
          AND q.embedding_due_at <= now()
        ORDER BY q.embedding_due_at, q.id
        LIMIT batch_size
        FOR UPDATE SKIP LOCKED
    ), claimed AS (
        UPDATE public.study_questions q
        SET embedding_status = CASE WHEN due.exhausted THEN 'failed' ELSE 'pending' END,
            embedding_claim_token = CASE WHEN due.exhausted THEN NULL ELSE gen_random_uuid() END,
            embedding_due_at = CASE WHEN due.exhausted THEN NULL ELSE now() + lease END,
            embedding_attempts = q.embedding_attempts
                + CASE WHEN q.embedding_status = 'pending' THEN 1 ELSE 0 END,
            embedding_last_error = CASE WHEN q.embedding_status = 'pending'
                THEN 'lease expired: the listener holding the claim did not finish'
                ELSE q.embedding_last_error END
        FROM due
        WHERE q.id = due.id
        RETURNING q.id, q.embedding_status, q.embedding_claim_token,
                  study_embed.render_question(q.question_text, q.choice_1, q.choice_2,
                                              q.choice_3, q.choice_4) AS body
    )
    SELECT c.id, c.embedding_claim_token, c.body
    FROM claimed c
    WHERE c.embedding_status = 'pending'
    ORDER BY c.id;
    PERFORM study_embed._set_actor(NULL);
END;
$$;
COMMENT ON FUNCTION study_embed.claim(integer, interval) IS
    'Claim up to batch_size claimable questions for embedding; returns id, claim token and the '
    'rendered text.  Costs what the queue holds, not what the table holds.';

-- Store the embeddings of a claimed batch in one call.  A row becomes ready only if its claim is
-- still the current one (so its text has not changed since the claim); the others are left as
-- they are.  The rows written are queued for near-duplicate detection (035_search.sql).
-- Returns the ids written.
CREATE OR REPLACE FUNCTION study_embed.complete(ids bigint[], claim_tokens uuid[],
                                                embeddings :"vector_schema".vector[], model text)
RETURNS SETOF bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    done bigint[];
BEGIN
    PERFORM study_embed._check_batch('complete', '{ids,claim_tokens,embeddings}',
        ARRAY[cardinality(ids), cardinality(claim_tokens), cardinality(embeddings)]);
    IF model IS NULL OR model = '' OR length(model) > 120 THEN
        RAISE EXCEPTION 'complete: model must be a name of 1 to 120 characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM study_embed._set_actor('complete');
    WITH written AS (
    UPDATE public.study_questions q
    SET embedding = c.embedding,
        embedding_status = 'ready',
        embedding_model = model,
        embedding_updated_at = now(),
        embedding_source_sha256 = study_embed.text_sha256(study_embed.render_question(
            q.question_text, q.choice_1, q.choice_2, q.choice_3, q.choice_4)),
        embedding_claim_token = NULL,
        embedding_due_at = NULL,
        embedding_queued_at = NULL,
        embedding_attempts = 0,
        embedding_last_error = NULL
    FROM unnest(ids, claim_tokens, embeddings) AS c(id, claim_token, embedding)
    WHERE q.id = c.id
      AND q.embedding_status = 'pending'
      AND q.embedding_claim_token = c.claim_token
      AND c.embedding IS NOT NULL
    RETURNING q.id)
    SELECT array_agg(w.id) INTO done FROM written w;
    PERFORM study_embed._set_actor(NULL);
    IF done IS NOT NULL THEN   -- near-duplicates are looked for later, off this hot path
        INSERT INTO study_embed.duplicate_queue (question_id)
        SELECT unnest(done) ON CONFLICT (question_id) DO UPDATE SET queued_at = now();
    END IF;
    RETURN QUERY SELECT unnest(done);
END;
$$;
COMMENT ON FUNCTION study_embed.complete(bigint[], uuid[], :"vector_schema".vector[], text) IS
    'Write the embeddings of claimed rows (ready); rows whose claim was voided are skipped.  '
    'Returns the ids written.';

-- Record failed attempts.  Retryable failures come back after an exponential backoff
-- (settings.retry_base * 2^(attempts-1), capped at retry_max) until settings.max_attempts;
-- a permanent failure (the input itself is bad) waits for an edit or an explicit retry.
-- The previous embedding is kept.  Returns the ids written.
CREATE OR REPLACE FUNCTION study_embed.fail(ids bigint[], claim_tokens uuid[], errors text[],
                                            retryable boolean DEFAULT true)
RETURNS SETOF bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg study_embed.settings := (SELECT s FROM study_embed.settings s);
BEGIN
    PERFORM study_embed._check_batch('fail', '{ids,claim_tokens,errors}',
        ARRAY[cardinality(ids), cardinality(claim_tokens), cardinality(errors)]);
    PERFORM study_embed._set_actor('fail');
    RETURN QUERY
    UPDATE public.study_questions q
    SET embedding_status = 'failed',
        embedding_claim_token = NULL,
        embedding_attempts = q.embedding_attempts + 1,
        embedding_due_at = CASE
            WHEN NOT coalesce(retryable, true) OR q.embedding_attempts + 1 >= cfg.max_attempts
                THEN NULL
            ELSE now() + least(cfg.retry_max,
                               cfg.retry_base * power(2, q.embedding_attempts)::double precision)
        END,
        embedding_last_error = left(coalesce(nullif(c.error, ''), 'unknown error'), 2000)
    FROM unnest(ids, claim_tokens, errors) AS c(id, claim_token, error)
    WHERE q.id = c.id
      AND q.embedding_status = 'pending'
      AND q.embedding_claim_token = c.claim_token
    RETURNING q.id;
    PERFORM study_embed._set_actor(NULL);
END;
$$;
COMMENT ON FUNCTION study_embed.fail(bigint[], uuid[], text[], boolean) IS
    'Mark claimed rows failed (previous embedding kept), with backoff when retryable.';

-- Give claimed rows back without counting an attempt: the embedding server was unavailable
-- (connection refused, timeout, 429, 5xx), which says nothing about the rows.  They are
-- claimable again after retry_in.  Returns the ids released.
CREATE OR REPLACE FUNCTION study_embed.release(ids bigint[], claim_tokens uuid[],
                                               retry_in interval DEFAULT '0 seconds',
                                               reason text DEFAULT NULL)
RETURNS SETOF bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM study_embed._check_batch('release', '{ids,claim_tokens}',
        ARRAY[cardinality(ids), cardinality(claim_tokens)]);
    PERFORM study_embed._set_actor('release');
    RETURN QUERY
    UPDATE public.study_questions q
    SET embedding_status = CASE
            WHEN q.embedding_attempts > 0 THEN 'failed'
            WHEN q.embedding IS NULL THEN 'none'
            ELSE 'stale' END,
        embedding_claim_token = NULL,
        embedding_due_at = now() + greatest(coalesce(retry_in, interval '0'), interval '0'),
        embedding_last_error = CASE WHEN q.embedding_attempts > 0
            THEN coalesce(left(reason, 2000), q.embedding_last_error)
            ELSE q.embedding_last_error END
    FROM unnest(ids, claim_tokens) AS c(id, claim_token)
    WHERE q.id = c.id
      AND q.embedding_status = 'pending'
      AND q.embedding_claim_token = c.claim_token
    RETURNING q.id;
    PERFORM study_embed._set_actor(NULL);
END;
$$;
COMMENT ON FUNCTION study_embed.release(bigint[], uuid[], interval, text) IS
    'Return claimed rows to the queue without counting an attempt (transient server trouble).';

-- Queue again every live ready row embedded by another model: after a model change.  (Rows
-- still queued or failed get the new model when they are next embedded.)
-- The rows keep serving their old vector until the new one replaces it.  Returns the count.
CREATE OR REPLACE FUNCTION study_embed.requeue_model(model text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    IF model IS NULL OR model = '' THEN
        RAISE EXCEPTION 'requeue_model: model must be given' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM study_embed._set_actor('requeue');
    UPDATE public.study_questions q
    SET embedding_status = 'stale', embedding_due_at = now(), embedding_queued_at = now(),
        embedding_attempts = 0, embedding_last_error = NULL
    WHERE q.deleted_at IS NULL
      AND q.embedding_status = 'ready'
      AND q.embedding_model IS DISTINCT FROM model;
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM study_embed._set_actor(NULL);
    RETURN n;
END;
$$;
COMMENT ON FUNCTION study_embed.requeue_model(text) IS
    'Queue every live row whose embedding_model differs from model; returns how many.';

-- Retry failed rows now, including those that used up their attempts.
CREATE OR REPLACE FUNCTION study_embed.retry_failed(ids bigint[] DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    PERFORM study_embed._set_actor('requeue');
    UPDATE public.study_questions q
    SET embedding_status = 'stale', embedding_due_at = now(),
        embedding_queued_at = coalesce(q.embedding_queued_at, now()),
        embedding_attempts = 0, embedding_last_error = NULL
    WHERE q.embedding_status = 'failed' AND q.deleted_at IS NULL
      AND (ids IS NULL OR q.id = ANY (ids));
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM study_embed._set_actor(NULL);
    RETURN n;
END;
$$;
COMMENT ON FUNCTION study_embed.retry_failed(bigint[]) IS
    'Queue failed rows (all, or the ids given) again now, with a fresh attempt budget.';

-- Queue again every live ready row whose embedding was computed from a text other than the one
-- render_question() makes now: what a migration that changes the rendered text must call.  The
-- rows keep serving their old vectors until the new ones land.  Returns the count.
CREATE OR REPLACE FUNCTION study_embed.requeue_changed_text()
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    PERFORM study_embed._set_actor('requeue');
    UPDATE public.study_questions q
    SET embedding_status = 'stale', embedding_due_at = now(), embedding_queued_at = now(),
        embedding_attempts = 0, embedding_last_error = NULL
    WHERE q.deleted_at IS NULL
      AND q.embedding_status = 'ready'
      AND q.embedding_source_sha256 IS DISTINCT FROM study_embed.text_sha256(
              study_embed.render_question(q.question_text, q.choice_1, q.choice_2,
                                          q.choice_3, q.choice_4));
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM study_embed._set_actor(NULL);
    RETURN n;
END;
$$;
COMMENT ON FUNCTION study_embed.requeue_changed_text() IS
    'Queue every live ready row whose embedding was computed from another rendering of its text '
    '(after a change of render_question); returns how many.';

-- What pg_cron runs every minute: the safety net under NOTIFY.  Folds the status-count deltas,
-- runs the near-duplicate pass, and wakes the listeners when anything is claimable.
CREATE OR REPLACE FUNCTION study_embed.tick()
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    claimable boolean;
BEGIN
    PERFORM study_embed.compact_counts();
    PERFORM study_embed.detect_duplicates();
    claimable := EXISTS (
        SELECT 1 FROM public.study_questions q
        WHERE q.deleted_at IS NULL AND q.embedding_status <> 'ready'
          AND q.embedding_due_at <= now());
    IF claimable THEN
        PERFORM pg_notify(study_embed.channel(), 'tick');
    END IF;
    RETURN claimable;
END;
$$;
COMMENT ON FUNCTION study_embed.tick() IS
    'Run by pg_cron every minute: NOTIFY the listeners if anything is claimable.';

-- The embedding column's declared dimension, from the catalog.
CREATE OR REPLACE FUNCTION study_embed.embedding_dimension()
RETURNS integer
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
RETURN (SELECT a.atttypmod FROM pg_attribute a
        WHERE a.attrelid = 'public.study_questions'::regclass AND a.attname = 'embedding'
          AND NOT a.attisdropped);
COMMENT ON FUNCTION study_embed.embedding_dimension() IS
    'The declared dimension of study_questions.embedding (listeners check their model against it).';
