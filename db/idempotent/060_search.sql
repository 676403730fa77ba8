-- 060_search.sql — re-runnable.  What the embeddings are for: similar questions, free-text
-- search, context for explanations (near-duplicates: 070_duplicates.sql, wrong-answer clusters:
-- 080_clusters.sql, both on the helpers defined here).
--
-- Tenant safety: every entry point takes the requesting user explicitly, and every query
-- filters on it; a question id that is not that user's gives nothing.  These functions are
-- SECURITY INVOKER: the caller needs SELECT on study_questions (the app's role has it, the
-- listener's role does not), and EXECUTE, granted to study_embed_app (095_privileges.sql).
--
-- Every function pins search_path to pg_catalog, pg_temp.  pgvector's operator is reached
-- through study_embed._cosine_distance(), whose body is bound when it is created (operator
-- qualified by schema) and which the planner inlines, so the HNSW index still serves ORDER BY.
--
-- psql variables: :"vector_schema".

-- Cosine distance, pgvector's `<=>`.  Deliberately without a SET clause: a SQL-standard body
-- resolves its names when it is created, not when it runs, and a function with SET clauses
-- could not be inlined (the index would no longer serve ORDER BY).
CREATE OR REPLACE FUNCTION study_embed._cosine_distance(a :"vector_schema".vector,
                                                        b :"vector_schema".vector)
RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN a OPERATOR(:"vector_schema".<=>) b;
COMMENT ON FUNCTION study_embed._cosine_distance(:"vector_schema".vector, :"vector_schema".vector) IS
    'pgvector''s cosine distance (<=>), schema-qualified; inlined by the planner.';

-- pgvector's vector_dims(), schema-qualified (as _cosine_distance).
CREATE OR REPLACE FUNCTION study_embed._dims(v :"vector_schema".vector)
RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN :"vector_schema".vector_dims(v);

-- Search settings for the HNSW index, for the current function call: callers carry a SET
-- clause, which scopes these set_config calls to them.  On pgvector >= 0.8 the iterative scan
-- goes on until enough rows pass the filters (relaxed order: callers sort at the end).
CREATE OR REPLACE FUNCTION study_embed._tune_hnsw_scan(k integer)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM set_config('hnsw.ef_search', greatest(100, k)::text, true);
    IF (SELECT string_to_array(e.extversion, '.')::int[] >= '{0,8}'
        FROM pg_extension e WHERE e.extname = 'vector') THEN
        PERFORM set_config('hnsw.iterative_scan', 'relaxed_order', true);
    END IF;
END;
$$;

-- The k nearest live, embedded questions of one user: the one KNN query everything else uses.
-- Only vectors of the served model (study_embed.generations, 046_generations.sql) are compared,
-- and only with a query of the served model's dimension.
-- It repeats the partial HNSW index's predicate so that the index can serve it, and on pgvector
-- >= 0.8 uses an iterative index scan, so that a user who owns a sliver of a large table still
-- gets k results (the scan goes on until k rows pass the user filter).  Relaxed order is
-- restored by the final sort.
CREATE OR REPLACE FUNCTION study_embed._nearest(
    for_user bigint, query :"vector_schema".vector, k integer,
    topic_id bigint DEFAULT NULL, exclude_id bigint DEFAULT NULL,
    with_explanation boolean DEFAULT false)
RETURNS TABLE (id bigint, distance double precision)
LANGUAGE plpgsql STABLE
ROWS 10                       -- k's default: the callers join its rows by primary key, not by
                              -- hashing the user's rows for the 1,000 rows of the default guess
SET search_path = pg_catalog, pg_temp
SET hnsw.ef_search = 100      -- the SET clause also scopes the set_config calls below
SET jit = off
AS $$
DECLARE
    served text := study_embed.served_model();
BEGIN
    IF for_user IS NULL THEN
        RAISE EXCEPTION 'a user must be given' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF k IS NULL OR k < 1 OR k > 1000 THEN
        RAISE EXCEPTION 'k must be between 1 and 1000, not %', k
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF query IS NULL THEN
        RETURN;
    END IF;
    IF study_embed._dims(query) <> study_embed.embedding_dimension() THEN
        RAISE EXCEPTION 'the query vector has % dimensions, but the served model % has %',
            study_embed._dims(query), served, study_embed.embedding_dimension()
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Embed the query with the served model (study_embed.served_model()).';
    END IF;
    PERFORM study_embed._tune_hnsw_scan(k);
    RETURN QUERY
    WITH nearest AS MATERIALIZED (
        SELECT q.id, study_embed._cosine_distance(q.embedding, query) AS distance
        FROM public.study_questions q
        WHERE q.deleted_at IS NULL AND q.embedding IS NOT NULL      -- the HNSW index predicate
          AND q.embedding_model = served         -- never a vector of another model (0008)
          AND q.user_id = for_user
          AND (topic_id IS NULL OR q.study_topic_id = topic_id)
          AND (exclude_id IS NULL OR q.id <> exclude_id)
          AND (NOT with_explanation
               OR q.explanation IS NOT NULL
               OR (q.ai_explanation_status = 'ready' AND q.ai_explanation IS NOT NULL))
        ORDER BY study_embed._cosine_distance(q.embedding, query)
        LIMIT k
    )
    SELECT n.id, n.distance FROM nearest n ORDER BY n.distance, n.id;
END;
$$;
COMMENT ON FUNCTION study_embed._nearest(bigint, :"vector_schema".vector, integer, bigint, bigint, boolean) IS
    'The k nearest live embedded questions of one user by cosine distance (HNSW).';

-- Free-text search: a query vector (the caller embeds the text) and a user.
CREATE OR REPLACE FUNCTION study_embed.search_questions(
    for_user bigint, query :"vector_schema".vector, k integer DEFAULT 10,
    topic_id bigint DEFAULT NULL)
RETURNS TABLE (id bigint, similarity double precision, study_topic_id bigint,
               question_text text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT q.id, 1 - n.distance, q.study_topic_id, q.question_text
    FROM study_embed._nearest(for_user, query, k, topic_id) n
    JOIN public.study_questions q ON q.id = n.id AND q.user_id = for_user
    ORDER BY n.distance, q.id;
END;
COMMENT ON FUNCTION study_embed.search_questions(bigint, :"vector_schema".vector, integer, bigint) IS
    'The k questions of a user most similar to a query vector, with cosine similarity.';

-- The words of a free-text query as a tsquery of the 'simple' configuration: each word a prefix
-- (a Korean stem finds its inflected forms: 고구려 matches 고구려를), any of them.  The text is
-- split on white space and punctuation, so nothing in it is tsquery syntax; NULL when it has
-- no word.
CREATE OR REPLACE FUNCTION study_embed._words_query(query_text text)
RETURNS tsquery
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN (SELECT to_tsquery('simple', string_agg(quote_literal(w) || ':*', ' | '))
        FROM regexp_split_to_table(lower(query_text), '[[:space:][:punct:]]+') AS w
        WHERE w <> '');
COMMENT ON FUNCTION study_embed._words_query(text) IS
    'A free-text query as an OR of prefix lexemes (simple configuration).';

-- Hybrid free-text search: the dense ranking (as search_questions) fused with a lexical one
-- (the query's words in the question and its choices, ts_rank, 'simple' configuration) by
-- reciprocal rank fusion (1 / (60 + rank), summed), so that an exact term (a year, a proper
-- noun, ARP) is not lost to a near neighbour.  The lexical side scans the user's live rows
-- (no index: nothing is added to the write path); `make eval` prints both rankings.
CREATE OR REPLACE FUNCTION study_embed.search_questions_hybrid(
    for_user bigint, query :"vector_schema".vector, query_text text, k integer DEFAULT 10,
    topic_id bigint DEFAULT NULL)
RETURNS TABLE (id bigint, similarity double precision, study_topic_id bigint,
               question_text text, score double precision)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    WITH dense AS (
        SELECT n.id, row_number() OVER (ORDER BY n.distance, n.id) AS r
        FROM study_embed._nearest(for_user, query, greatest(k, 50), topic_id) n
    ), words AS (
        SELECT study_embed._words_query(query_text) AS tsq
    ), lexical AS (
        SELECT x.id, row_number() OVER (ORDER BY x.rank DESC, x.id) AS r
        FROM (
            SELECT q.id,
                   ts_rank(to_tsvector('simple', concat_ws(' ', q.question_text, q.choice_1,
                                                         q.choice_2, q.choice_3, q.choice_4)),
                           w.tsq) AS rank
            FROM public.study_questions q, words w
            WHERE q.user_id = for_user AND q.deleted_at IS NULL AND q.embedding IS NOT NULL
              AND q.embedding_model = (SELECT study_embed.served_model())
              AND (search_questions_hybrid.topic_id IS NULL
                   OR q.study_topic_id = search_questions_hybrid.topic_id)
              AND to_tsvector('simple', concat_ws(' ', q.question_text, q.choice_1, q.choice_2,
                                                  q.choice_3, q.choice_4)) @@ w.tsq
            ORDER BY 2 DESC, q.id
            LIMIT greatest(k, 50)
        ) x
    ), fused AS (
        SELECT f.id, sum(1.0 / (60 + f.r))::double precision AS score
        FROM (SELECT d.id, d.r FROM dense d UNION ALL SELECT l.id, l.r FROM lexical l) f
        GROUP BY f.id
    )
    SELECT q.id, 1 - study_embed._cosine_distance(q.embedding, query), q.study_topic_id,
           q.question_text, f.score
    FROM fused f
    JOIN public.study_questions q ON q.id = f.id AND q.user_id = for_user
    ORDER BY f.score DESC, q.id
    LIMIT k;
END;
COMMENT ON FUNCTION study_embed.search_questions_hybrid(bigint, :"vector_schema".vector, text, integer, bigint) IS
    'Free-text search in one user''s questions: dense and lexical rankings fused (RRF).';

-- Similar questions: the k most similar live questions of the requesting user to one of that
-- user's questions (optionally of its topic), itself excluded.  Empty while the question has no
-- embedding, and for a question that is not the user's.
DROP FUNCTION IF EXISTS study_embed.similar_questions(bigint, integer, boolean);
CREATE OR REPLACE FUNCTION study_embed.similar_questions(
    for_user bigint, question_id bigint, k integer DEFAULT 10, same_topic boolean DEFAULT false)
RETURNS TABLE (id bigint, similarity double precision, study_topic_id bigint,
               question_text text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT q.id, 1 - n.distance, q.study_topic_id, q.question_text
    FROM public.study_questions src
    CROSS JOIN LATERAL study_embed._nearest(
        src.user_id, src.embedding, k,
        CASE WHEN same_topic THEN src.study_topic_id END, src.id) n
    JOIN public.study_questions q ON q.id = n.id AND q.user_id = src.user_id
    WHERE src.id = similar_questions.question_id AND src.user_id = similar_questions.for_user
      AND src.deleted_at IS NULL AND src.embedding_model = (SELECT study_embed.served_model())
    ORDER BY n.distance, q.id;
END;
COMMENT ON FUNCTION study_embed.similar_questions(bigint, bigint, integer, boolean) IS
    'The k live questions of a user most similar to one of that user''s questions (itself '
    'excluded); empty for a question that is not the user''s.';

-- Context for an explanation generator: the most similar questions of the requesting user that
-- have an explanation (written, or an AI explanation that is ready), with their texts, none of
-- them less similar than the served model's relevance floor (model_thresholds.
-- context_threshold, calibrated by `make eval`; no floor for a model without one): an unrelated
-- question makes a generator's explanation worse than no context at all, so a question with
-- nothing related gets nothing.  Empty for a question that is not the user's.
DROP FUNCTION IF EXISTS study_embed.explanation_context(bigint, integer);
CREATE OR REPLACE FUNCTION study_embed.explanation_context(for_user bigint, question_id bigint,
                                                          k integer DEFAULT 5)
RETURNS TABLE (id bigint, similarity double precision, question_text text, correct_choice smallint,
               correct_answer text, explanation text, ai_explanation text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT q.id, 1 - n.distance,
           study_embed.render_question(q.question_text, q.choice_1, q.choice_2, q.choice_3,
                                       q.choice_4),
           q.correct_choice,
           (ARRAY[q.choice_1, q.choice_2, q.choice_3, q.choice_4])[q.correct_choice],
           q.explanation,
           CASE WHEN q.ai_explanation_status = 'ready' THEN q.ai_explanation END
    FROM public.study_questions src
    CROSS JOIN LATERAL study_embed._nearest(src.user_id, src.embedding, k, NULL, src.id, true) n
    JOIN public.study_questions q ON q.id = n.id AND q.user_id = src.user_id
    WHERE src.id = explanation_context.question_id AND src.user_id = explanation_context.for_user
      AND src.deleted_at IS NULL AND src.embedding_model = (SELECT study_embed.served_model())
      AND 1 - n.distance >= coalesce((SELECT m.context_threshold
                                      FROM study_embed.model_thresholds m
                                      WHERE m.model = (SELECT study_embed.served_model())), -1)
    ORDER BY n.distance, q.id;
END;
COMMENT ON FUNCTION study_embed.explanation_context(bigint, bigint, integer) IS
    'RAG context: similar questions of the same user that carry an explanation, with texts, '
    'none below the served model''s relevance floor; empty for a question that is not the '
    'user''s.';
