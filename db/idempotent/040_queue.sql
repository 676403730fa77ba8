-- 040_queue.sql — re-runnable.  The queue API: the only functions a listener calls.
--
-- The claim commits before any model call: no transaction or row lock is held while a text is
-- embedded.  A claim hands out a fresh token per row; complete/fail/release act only while that
-- token is still the row's current one, which a content edit voids.
--
-- These functions are SECURITY DEFINER, owned by study_embed_pipeline (095_privileges.sql), so
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

-- Every queue transition below changes only columns that no index uses (status, claim token,
-- due time, attempts, last error), so on a row with room on its page the UPDATE is HOT: no new
-- index entry, in particular no HNSW insert of a vector that did not change.  Only complete()
-- (a new vector) and a row joining or leaving the queue (embedding_queued_at) add entries.
-- Each function records the status counts of the rows it moved in one statement.

-- A batch size must be between 1 and most.
CREATE OR REPLACE FUNCTION study_embed._check_batch_size(fn text, batch_size integer,
                                                         most integer)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF batch_size IS NULL OR batch_size < 1 OR batch_size > most THEN
        RAISE EXCEPTION '%: batch_size must be between 1 and %, not %', fn, most, batch_size
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END;
$$;

-- Claim up to batch_size claimable rows: none, stale, failed and due for retry, or pending with
-- an expired lease (an expired lease counts as a failed attempt), oldest content version first.
-- Concurrent claimers skip each other's rows (FOR UPDATE SKIP LOCKED).
CREATE OR REPLACE FUNCTION study_embed.claim(batch_size integer DEFAULT 10,
                                             lease interval DEFAULT '2 minutes')
RETURNS TABLE (id bigint, claim_token uuid, body text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    max_attempts smallint := (SELECT s.max_attempts FROM study_embed.settings s);
    ids bigint[];
    was text[];
    now_is text[];
    tokens uuid[];
    bodies text[];
BEGIN
    PERFORM study_embed._check_batch_size('claim', batch_size, 10000);
    IF lease IS NULL OR lease <= interval '0' THEN
        RAISE EXCEPTION 'claim: lease must be a positive interval, not %', lease
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM study_embed._set_actor('claim');
    -- Rows whose lease expired with their attempts used up are turned failed, not claimed; when
    -- a batch held only such rows, take the next ones, so that a claim returns work while there
    -- is some (each round parks at least one row: it ends).
    LOOP
        WITH due AS (
            SELECT q.id, q.embedding_status AS was,
                   -- an expired lease whose row has used up its attempts: failed, not claimed
                   q.embedding_status = 'pending' AND q.embedding_attempts + 1 >= max_attempts
                       AS exhausted
            FROM public.study_questions q
            WHERE q.deleted_at IS NULL AND q.embedding_queued_at <= now()   -- the queue index
              AND q.embedding_due_at <= now()
            ORDER BY q.embedding_queued_at, q.id
            LIMIT batch_size
            FOR UPDATE SKIP LOCKED
        ), claimed AS (
            UPDATE public.study_questions q
            SET embedding_status = CASE WHEN due.exhausted THEN 'failed' ELSE 'pending' END,
                embedding_claim_token = CASE WHEN due.exhausted THEN NULL ELSE gen_random_uuid() END,
                embedding_due_at = CASE WHEN due.exhausted THEN NULL ELSE now() + lease END,
                -- parked (out of the queue) until an edit or retry_failed()
                embedding_queued_at = CASE WHEN due.exhausted THEN NULL
                                           ELSE q.embedding_queued_at END,
                embedding_attempts = q.embedding_attempts
                    + CASE WHEN q.embedding_status = 'pending' THEN 1 ELSE 0 END,
                embedding_last_error = CASE WHEN q.embedding_status = 'pending'
                    THEN 'lease expired: the listener holding the claim did not finish'
                    ELSE q.embedding_last_error END
            FROM due
            WHERE q.id = due.id
            RETURNING q.id, due.was, q.embedding_status, q.embedding_claim_token,
                      study_embed.render_question(q.question_text, q.choice_1, q.choice_2,
                                                  q.choice_3, q.choice_4) AS body
        )
        SELECT array_agg(c.id), array_agg(c.was::text), array_agg(c.embedding_status::text),
               array_agg(c.embedding_claim_token), array_agg(c.body)
        INTO ids, was, now_is, tokens, bodies
        FROM claimed c;
        PERFORM study_embed._count_moves(was, study_embed._all(was, false),
                                         now_is, study_embed._all(was, false));
        EXIT WHEN ids IS NULL OR 'pending' = ANY (now_is);
    END LOOP;
    PERFORM study_embed._set_actor(NULL);
    RETURN QUERY
    SELECT c.id, c.token, c.body
    FROM unnest(ids, now_is, tokens, bodies) AS c(id, status, token, body)
    WHERE c.status = 'pending'
    ORDER BY c.id;
END;
$$;
COMMENT ON FUNCTION study_embed.claim(integer, interval) IS
    'Claim up to batch_size claimable questions for embedding; returns id, claim token and the '
    'rendered text.  Costs what the queue holds, not what the table holds.';

-- The claim a queue call presents is still the row's current one: the row is pending under
-- that token.  An edit of the text, a takeover after the lease expired, or an earlier outcome
-- voids it.  complete(), fail() and release() act only on rows for which this holds.
--
-- One expression over the row and the presented claim, on purpose: written as `status =
-- 'pending' AND ...`, the planner pushed the row-only half down to the table (where ANALYZE,
-- run while nothing is in flight, sees no pending row), estimated one row, and chose a nested
-- loop that re-read the whole batch, vectors and all, once per row: a batch of 500 cost its
-- database more than twice per row what a batch of 100 did (BENCHMARKS.md).  As one CASE it is
-- a join condition; the batch's ids lead the join.
CREATE OR REPLACE FUNCTION study_embed._claim_is_current(status text, current_token uuid,
                                                         presented_token uuid)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN status = 'pending' THEN current_token = presented_token ELSE false END;

-- Store the embeddings of a claimed batch in one call, made by the served model (study_embed.
-- generations, 046_generations.sql).  A row becomes ready only if its claim is still the
-- current one (so its text has not changed since the claim); the others are left as they are.
-- The rows written are queued for near-duplicate detection (070_duplicates.sql).  Returns the
-- ids written.
CREATE OR REPLACE FUNCTION study_embed.complete(ids bigint[], claim_tokens uuid[],
                                                embeddings :"vector_schema".vector[], model text)
RETURNS SETOF bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    done bigint[];
    deleted boolean[];
BEGIN
    PERFORM study_embed._check_batch('complete', '{ids,claim_tokens,embeddings}',
        ARRAY[cardinality(ids), cardinality(claim_tokens), cardinality(embeddings)]);
    IF model IS NULL OR model = '' OR length(model) > 120 THEN
        RAISE EXCEPTION 'complete: model must be a name of 1 to 120 characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- one model per generation: a listener set up for another model is told, not obeyed
    IF model IS DISTINCT FROM study_embed.served_model() THEN
        RAISE EXCEPTION 'complete: the database serves model %, not %',
            study_embed.served_model(), model
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Set EMBEDDING_MODEL to the served model; to change the model, '
                         'study-embed model begin.';
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
          AND study_embed._claim_is_current(q.embedding_status, q.embedding_claim_token,
                                            c.claim_token)
          AND c.embedding IS NOT NULL
        RETURNING q.id, q.deleted_at IS NOT NULL AS deleted
    )
    SELECT array_agg(w.id), array_agg(w.deleted) INTO done, deleted FROM written w;
    PERFORM study_embed._set_actor(NULL);
    PERFORM study_embed._count_moves(study_embed._all(done, 'pending'::text), deleted,
                                     study_embed._all(done, 'ready'::text), deleted);
    IF done IS NOT NULL THEN   -- near-duplicates are looked for later, off this hot path
        -- an adopted row's own hash now says where its vector came from
        DELETE FROM study_embed.adopted_source a WHERE a.question_id = ANY (done);
        INSERT INTO study_embed.duplicate_queue (question_ids) VALUES (done);  -- one row a batch
    END IF;
    RETURN QUERY SELECT unnest(done);
END;
$$;
COMMENT ON FUNCTION study_embed.complete(bigint[], uuid[], :"vector_schema".vector[], text) IS
    'Write the embeddings of claimed rows (ready); rows whose claim was voided are skipped.  '
    'Returns the ids written.';

-- Record failed attempts.  Retryable failures come back after an exponential backoff
-- (settings.retry_base * 2^(attempts-1), capped at retry_max) until settings.max_attempts;
-- a permanent failure (the input itself is bad) waits for an edit or an explicit retry, parked
-- out of the queue.  The previous embedding is kept.  Returns the ids written.
CREATE OR REPLACE FUNCTION study_embed.fail(ids bigint[], claim_tokens uuid[], errors text[],
                                            retryable boolean DEFAULT true)
RETURNS SETOF bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg study_embed.settings := (SELECT s FROM study_embed.settings s);
    done bigint[];
    deleted boolean[];
BEGIN
    PERFORM study_embed._check_batch('fail', '{ids,claim_tokens,errors}',
        ARRAY[cardinality(ids), cardinality(claim_tokens), cardinality(errors)]);
    PERFORM study_embed._set_actor('fail');
    WITH failed AS (
        UPDATE public.study_questions q
        SET embedding_status = 'failed',
            embedding_claim_token = NULL,
            embedding_attempts = q.embedding_attempts + 1,
            -- retryable and attempts left: back after the backoff; else parked
            embedding_due_at = CASE
                WHEN NOT coalesce(retryable, true) OR q.embedding_attempts + 1 >= cfg.max_attempts
                THEN NULL
                -- the exponent is capped before the multiplication: 2^30 * retry_base is
                -- already past any sensible retry_max, and interval arithmetic overflows later
                ELSE now() + least(cfg.retry_max, cfg.retry_base
                                   * power(2, least(q.embedding_attempts, 30))::double precision)
            END,
            embedding_queued_at = CASE
                WHEN NOT coalesce(retryable, true) OR q.embedding_attempts + 1 >= cfg.max_attempts
                THEN NULL ELSE q.embedding_queued_at END,
            embedding_last_error = left(coalesce(nullif(c.error, ''), 'unknown error'), 2000)
        FROM unnest(ids, claim_tokens, errors) AS c(id, claim_token, error)
        WHERE q.id = c.id
          AND study_embed._claim_is_current(q.embedding_status, q.embedding_claim_token,
                                            c.claim_token)
        RETURNING q.id, q.deleted_at IS NOT NULL AS deleted
    )
    SELECT array_agg(x.id), array_agg(x.deleted) INTO done, deleted FROM failed x;
    PERFORM study_embed._set_actor(NULL);
    PERFORM study_embed._count_moves(study_embed._all(done, 'pending'::text), deleted,
                                     study_embed._all(done, 'failed'::text), deleted);
    RETURN QUERY SELECT unnest(done);
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
DECLARE
    done bigint[];
    now_is text[];
    deleted boolean[];
BEGIN
    PERFORM study_embed._check_batch('release', '{ids,claim_tokens}',
        ARRAY[cardinality(ids), cardinality(claim_tokens)]);
    PERFORM study_embed._set_actor('release');
    WITH released AS (
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
          AND study_embed._claim_is_current(q.embedding_status, q.embedding_claim_token,
                                            c.claim_token)
        RETURNING q.id, q.embedding_status, q.deleted_at IS NOT NULL AS deleted
    )
    SELECT array_agg(r.id), array_agg(r.embedding_status::text), array_agg(r.deleted)
    INTO done, now_is, deleted FROM released r;
    PERFORM study_embed._set_actor(NULL);
    PERFORM study_embed._count_moves(study_embed._all(done, 'pending'::text), deleted,
                                     now_is, deleted);
    IF done IS NOT NULL AND coalesce(retry_in, interval '0') <= interval '0' THEN
        PERFORM study_embed._wake('release');    -- another listener may take them at once
    END IF;
    RETURN QUERY SELECT unnest(done);
END;
$$;
COMMENT ON FUNCTION study_embed.release(bigint[], uuid[], interval, text) IS
    'Return claimed rows to the queue without counting an attempt (transient server trouble).';

-- The batch behind requeue_model() and requeue_changed_text(): a keyset walk over the primary
-- key, so a batch costs its size.
CREATE OR REPLACE FUNCTION study_embed._requeue(why text, model text, after_id bigint,
                                                batch_size integer)
RETURNS TABLE (requeued bigint, next_after_id bigint)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    last_id bigint;
    n bigint;
BEGIN
    PERFORM study_embed._check_batch_size(
        CASE why WHEN 'model' THEN 'requeue_model' ELSE 'requeue_changed_text' END,
        batch_size, 1000000);
    SELECT max(w.id) INTO last_id
    FROM (SELECT q.id FROM public.study_questions q WHERE q.id > coalesce(after_id, 0)
          ORDER BY q.id LIMIT batch_size) w;
    PERFORM study_embed._set_actor('requeue');
    WITH moved AS (
        UPDATE public.study_questions q
        SET embedding_status = 'stale', embedding_due_at = now(), embedding_queued_at = now(),
            embedding_attempts = 0, embedding_last_error = NULL
        WHERE q.id > coalesce(after_id, 0) AND q.id <= last_id
          AND q.deleted_at IS NULL
          AND q.embedding_status = 'ready'
          AND CASE why
                WHEN 'model' THEN q.embedding_model IS DISTINCT FROM _requeue.model
                -- an adopted row's hash is beside it (045_adoption.sql)
                ELSE coalesce(q.embedding_source_sha256,
                              (SELECT a.source_sha256 FROM study_embed.adopted_source a
                               WHERE a.question_id = q.id))
                     IS DISTINCT FROM study_embed.text_sha256(
                         study_embed.render_question(q.question_text, q.choice_1, q.choice_2,
                                                     q.choice_3, q.choice_4)) END
        RETURNING 1
    )
    SELECT count(*) INTO n FROM moved;
    PERFORM study_embed._count_live_moves('ready', 'stale', n);
    PERFORM study_embed._set_actor(NULL);
    IF n > 0 THEN
        PERFORM study_embed._wake('requeue');
    END IF;
    RETURN QUERY SELECT n, last_id;
END;
$$;

-- Queue ready rows again (the rows keep serving their old vector until the new one replaces
-- it), a bounded batch per call so that no transaction runs long on a large bank and listeners
-- embed meanwhile.  The rows are taken in id order after `after_id`; each call returns how many
-- it queued and the id to continue after, NULL when the table is done.
-- A requeued row joins the queue index, so its update is not HOT (BENCHMARKS.md).
DROP FUNCTION IF EXISTS study_embed.requeue_model(text);
CREATE OR REPLACE FUNCTION study_embed.requeue_model(model text, after_id bigint DEFAULT 0,
                                                     batch_size integer DEFAULT 10000)
RETURNS TABLE (requeued bigint, next_after_id bigint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF model IS NULL OR model = '' THEN
        RAISE EXCEPTION 'requeue_model: model must be given' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY SELECT * FROM study_embed._requeue('model', model, after_id, batch_size);
END;
$$;
COMMENT ON FUNCTION study_embed.requeue_model(text, bigint, integer) IS
    'Queue live ready rows whose embedding_model differs from model, a batch of ids after '
    'after_id per call; returns how many and the id to continue after (NULL: done).';

-- After a change of render_question(): queue every live ready row whose embedding was computed
-- from another rendering of its text (what the migration shipping such a change calls, in
-- batches, as requeue_model).
DROP FUNCTION IF EXISTS study_embed.requeue_changed_text();
CREATE OR REPLACE FUNCTION study_embed.requeue_changed_text(after_id bigint DEFAULT 0,
                                                            batch_size integer DEFAULT 10000)
RETURNS TABLE (requeued bigint, next_after_id bigint)
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT * FROM study_embed._requeue('text', NULL, after_id, batch_size);
END;
COMMENT ON FUNCTION study_embed.requeue_changed_text(bigint, integer) IS
    'Queue live ready rows embedded from another rendering of their text, a batch per call; '
    'returns how many and the id to continue after (NULL: done).';

-- Retry failed rows now with a fresh attempt budget, those that used up their attempts
-- included: all (or the ids given), at most batch_size per call (call again while it returns
-- batch_size).  Returns how many.
DROP FUNCTION IF EXISTS study_embed.retry_failed(bigint[]);
CREATE OR REPLACE FUNCTION study_embed.retry_failed(ids bigint[] DEFAULT NULL,
                                                    batch_size integer DEFAULT 10000)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    PERFORM study_embed._check_batch_size('retry_failed', batch_size, 1000000);
    PERFORM study_embed._set_actor('requeue');
    WITH moved AS (
        UPDATE public.study_questions q
        SET embedding_status = 'stale', embedding_due_at = now(),
            -- a parked row comes back to the queue; a waiting one keeps its place (HOT)
            embedding_queued_at = coalesce(q.embedding_queued_at, now()),
            embedding_attempts = 0, embedding_last_error = NULL
        WHERE q.id IN (SELECT f.id FROM public.study_questions f
                       WHERE f.deleted_at IS NULL AND f.embedding_status = 'failed'
                         AND (ids IS NULL OR f.id = ANY (ids))
                       LIMIT batch_size FOR UPDATE SKIP LOCKED)
        RETURNING 1
    )
    SELECT count(*) INTO n FROM moved;
    PERFORM study_embed._count_live_moves('failed', 'stale', n);
    PERFORM study_embed._set_actor(NULL);
    IF n > 0 THEN
        PERFORM study_embed._wake('retry');
    END IF;
    RETURN n;
END;
$$;
COMMENT ON FUNCTION study_embed.retry_failed(bigint[], integer) IS
    'Queue failed rows (all, or the ids given) again now, with a fresh attempt budget; at most '
    'batch_size per call.';

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
