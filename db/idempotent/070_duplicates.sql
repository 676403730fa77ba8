-- 070_duplicates.sql — re-runnable.  Near-duplicate questions: the pre-insert check, the
-- near-duplicate pass that consumes study_embed.duplicate_queue (filled by complete()), the open
-- pairs and their dismissal.  Built on _nearest()'s helpers (060_search.sql).
--
-- Tenant safety as in 060_search.sql: every entry point takes the requesting user explicitly.
-- The pass (run by tick() and the listener) and the dismissal of a pair are SECURITY DEFINER;
-- the rest runs with the caller's rights.
--
-- psql variables: :"vector_schema".

-- The text of a question's correct choice, as compared for near-duplicates: case and runs of
-- white space do not count.  NULL when the correct choice is not 1 to 4.
CREATE OR REPLACE FUNCTION study_embed.answer_key(choice_1 text, choice_2 text, choice_3 text,
                                                  choice_4 text, correct integer)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN lower(btrim(regexp_replace(
    CASE correct WHEN 1 THEN choice_1 WHEN 2 THEN choice_2 WHEN 3 THEN choice_3
                 WHEN 4 THEN choice_4 END, '\s+', ' ', 'g')));
COMMENT ON FUNCTION study_embed.answer_key(text, text, text, text, integer) IS
    'The correct choice''s text, lower-cased, white space collapsed: near-duplicates share it.';

-- Pre-insert check: near-duplicates of a query vector in a user's bank.
DROP FUNCTION IF EXISTS study_embed.find_duplicates(bigint, :"vector_schema".vector, real);
CREATE OR REPLACE FUNCTION study_embed.find_duplicates(
    for_user bigint, query :"vector_schema".vector, threshold real DEFAULT NULL,
    answer text DEFAULT NULL)
RETURNS TABLE (id bigint, similarity double precision, question_text text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT q.id, 1 - n.distance, q.question_text
    FROM study_embed.settings s
    CROSS JOIN LATERAL study_embed._nearest(for_user, query, s.duplicate_neighbours) n
    JOIN public.study_questions q ON q.id = n.id AND q.user_id = for_user
    LEFT JOIN study_embed.model_thresholds m ON m.model = q.embedding_model   -- the served one
    WHERE 1 - n.distance >= coalesce(find_duplicates.threshold, m.duplicate_threshold,
                                     s.duplicate_threshold)
      AND (find_duplicates.answer IS NULL OR NOT s.duplicate_same_answer
           OR study_embed.answer_key(q.choice_1, q.choice_2, q.choice_3, q.choice_4,
                                     q.correct_choice)
              = lower(btrim(regexp_replace(find_duplicates.answer, '\s+', ' ', 'g'))))
    ORDER BY n.distance, q.id;
END;
COMMENT ON FUNCTION study_embed.find_duplicates(bigint, :"vector_schema".vector, real, text) IS
    'Questions of a user whose similarity to a query vector is at least the threshold (default: '
    'the model''s in model_thresholds, else settings.duplicate_threshold) and, given the new '
    'question''s correct answer, whose correct choice reads the same: the check before '
    'inserting a question.';

-- Record the near-duplicates of the given questions: among their nearest neighbours, those at
-- least the model's threshold (model_thresholds, else settings.duplicate_threshold) whose
-- correct choice reads the same (settings.duplicate_same_answer).  Their earlier open pairs are
-- replaced (the text may have changed); dismissed pairs stay dismissed.  One set-based statement per
-- chunk, with the same predicate and per-user filter as _nearest().
CREATE OR REPLACE FUNCTION study_embed._record_duplicates(ids bigint[])
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
SET hnsw.ef_search = 100
SET jit = off                 -- a short OLTP statement: compiling it costs more than it saves
AS $$
DECLARE
    neighbours smallint;
    threshold real;
    same_answer boolean;
    served text := study_embed.served_model();    -- one model's vectors with each other only
BEGIN
    SELECT s.duplicate_neighbours, s.duplicate_threshold, s.duplicate_same_answer
    INTO neighbours, threshold, same_answer
    FROM study_embed.settings s;
    PERFORM study_embed._tune_hnsw_scan(neighbours);
    DELETE FROM study_embed.duplicate_candidates d
    WHERE (d.question_id = ANY (ids) OR d.duplicate_of = ANY (ids)) AND d.dismissed_at IS NULL;
    INSERT INTO study_embed.duplicate_candidates (question_id, duplicate_of, user_id, similarity)
    SELECT least(q.id, n.id), greatest(q.id, n.id), q.user_id, (1 - n.distance)::real
    FROM public.study_questions q
    LEFT JOIN study_embed.model_thresholds m ON m.model = q.embedding_model
    CROSS JOIN LATERAL (
        SELECT o.id, study_embed._cosine_distance(o.embedding, q.embedding) AS distance,
               study_embed.answer_key(o.choice_1, o.choice_2, o.choice_3, o.choice_4,
                                      o.correct_choice) AS answer
        FROM public.study_questions o
        WHERE o.deleted_at IS NULL AND o.embedding IS NOT NULL      -- the HNSW index predicate
          AND o.embedding_model = served
          AND o.user_id = q.user_id AND o.id <> q.id
        ORDER BY study_embed._cosine_distance(o.embedding, q.embedding)
        LIMIT neighbours) n
    WHERE q.id = ANY (ids) AND q.deleted_at IS NULL AND q.embedding_model = served
      AND 1 - n.distance >= coalesce(m.duplicate_threshold, threshold)
      -- a question one word away that asks for another answer is not a duplicate
      AND (NOT same_answer
           OR n.answer = study_embed.answer_key(q.choice_1, q.choice_2, q.choice_3, q.choice_4,
                                                q.correct_choice))
    ON CONFLICT (question_id, duplicate_of) DO NOTHING;
END;
$$;

-- The near-duplicate pass: questions embedded since the last pass (queued by complete(), a row
-- per call), oldest first, in chunks, until the queue is empty or the time budget is spent.  Its
-- cost per question grows with the size of the user's bank (the planner scans a small bank
-- exactly), which is why it is not part of complete().  Run by tick() and by an idle listener;
-- concurrent runs take different queue rows.  Returns how many questions it examined.
CREATE OR REPLACE FUNCTION study_embed.detect_duplicates(budget interval DEFAULT '10 seconds',
                                                         chunk integer DEFAULT 200)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    started timestamptz := clock_timestamp();
    ids bigint[];
    room integer;
    queued record;
    examined bigint := 0::bigint;
BEGIN
    IF chunk IS NULL OR chunk < 1 THEN
        RAISE EXCEPTION 'detect_duplicates: chunk must be a positive number of questions, not %',
            quote_nullable(chunk) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    LOOP
        ids := '{}';
        -- the oldest queue rows until the chunk is full; the one that overfills it gives up its
        -- first ids and keeps the rest (locked by this pass until it ends)
        FOR queued IN
            SELECT d.id, d.question_ids FROM study_embed.duplicate_queue d
            ORDER BY d.id FOR UPDATE SKIP LOCKED
        LOOP
            room := chunk - cardinality(ids);
            IF cardinality(queued.question_ids) > room THEN
                UPDATE study_embed.duplicate_queue d SET question_ids = queued.question_ids[room + 1:]
                WHERE d.id = queued.id;
                ids := ids || queued.question_ids[:room];
            ELSE
                DELETE FROM study_embed.duplicate_queue d WHERE d.id = queued.id;
                ids := ids || queued.question_ids;
            END IF;
            EXIT WHEN cardinality(ids) >= chunk;
        END LOOP;
        EXIT WHEN cardinality(ids) = 0;
        -- a question embedded twice since the last pass is examined once
        ids := ARRAY(SELECT DISTINCT x FROM unnest(ids) AS x);
        PERFORM study_embed._record_duplicates(ids);
        examined := examined + cardinality(ids);
        EXIT WHEN clock_timestamp() - started >= budget;
    END LOOP;
    RETURN examined;
END;
$$;
COMMENT ON FUNCTION study_embed.detect_duplicates(interval, integer) IS
    'Record near-duplicate pairs for questions embedded since the last pass, within a time budget.';

-- Runs with the caller's rights (security_invoker): reading the texts needs SELECT on
-- study_questions, as reading the table does.
DROP VIEW IF EXISTS study_embed.duplicate_pairs;
CREATE VIEW study_embed.duplicate_pairs WITH (security_invoker = true) AS
SELECT d.user_id, d.question_id, d.duplicate_of, d.similarity, d.detected_at,
       a.question_text AS question_text, b.question_text AS duplicate_text
FROM study_embed.duplicate_candidates d
JOIN public.study_questions a ON a.id = d.question_id AND a.user_id = d.user_id
JOIN public.study_questions b ON b.id = d.duplicate_of AND b.user_id = d.user_id
WHERE d.dismissed_at IS NULL AND a.deleted_at IS NULL AND b.deleted_at IS NULL;
COMMENT ON VIEW study_embed.duplicate_pairs IS
    'Open near-duplicate pairs of live questions, with both texts; filter by user_id.  Runs '
    'with the caller''s rights.';

-- Close a near-duplicate pair of one user ("not a duplicate"): the only way to write
-- duplicate_candidates from outside the pipeline.  Either order of the two ids; a pair that
-- is not that user's is left alone.  Returns whether a pair was dismissed.
CREATE OR REPLACE FUNCTION study_embed.dismiss_duplicate(for_user bigint, question_id bigint,
                                                        duplicate_of bigint)
RETURNS boolean
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    WITH dismissed AS (
        UPDATE study_embed.duplicate_candidates d
        SET dismissed_at = now()
        WHERE d.user_id = dismiss_duplicate.for_user
          AND d.question_id = least(dismiss_duplicate.question_id, dismiss_duplicate.duplicate_of)
          AND d.duplicate_of = greatest(dismiss_duplicate.question_id, dismiss_duplicate.duplicate_of)
          AND d.dismissed_at IS NULL
        RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM dismissed);
END;
COMMENT ON FUNCTION study_embed.dismiss_duplicate(bigint, bigint, bigint) IS
    'Dismiss the open near-duplicate pair (question_id, duplicate_of) of a user; false when '
    'that user has no such open pair.';
