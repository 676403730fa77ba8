-- 080_clusters.sql — re-runnable.  Wrong-answer clusters: the questions a user keeps getting
-- wrong, grouped by similarity (SECURITY INVOKER, tenant-explicit like 060_search.sql, on its
-- _cosine_distance()).
--
-- psql variables: :"vector_schema".

-- Wrong-answer clusters.  The questions a user most recently got wrong (latest attempt wrong,
-- the `recent` most recent of them) are grouped greedily: the question with the most
-- still-unassigned neighbours at cosine similarity >= `threshold` becomes a cluster's
-- representative and takes those neighbours with it; repeat until every question is placed.
-- Every member is therefore within `threshold` of its representative (no chaining), and a
-- question with no close neighbour is a cluster of its own.  Cost: the pairwise similarities
-- of the `recent` vectors (one set-based statement over vectors read once), then a pass per
-- cluster over the questions and the close pairs (BENCHMARKS.md: 500 wrong answers).  Only
-- vectors of the served model are compared.  Without a threshold, the served model's
-- (model_thresholds.cluster_threshold), else 0.75.
CREATE OR REPLACE FUNCTION study_embed.wrong_answer_clusters(
    for_user bigint, recent integer DEFAULT 50, threshold real DEFAULT NULL)
RETURNS TABLE (cluster integer, representative_id bigint, question_id bigint,
               similarity double precision, question_text text, last_wrong_at timestamptz)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    qids bigint[];
    wrong_at timestamptz[];
    texts text[];
    self_sim double precision[];   -- a question's similarity to itself (1, to rounding)
    n integer;
    -- the close pairs (similarity >= threshold), both ways, sorted by (i, j): the neighbours of
    -- question i are b[first[i] .. first[i + 1] - 1] (compressed sparse rows)
    b integer[];
    sim double precision[];
    first integer[];
    degree integer[];          -- unplaced close neighbours, kept up to date
    assigned integer[];        -- cluster number per question, 0 = not yet
    members integer[];
    member_sims double precision[];
    member_sim double precision;
    c integer := 0;
    best integer;
    j integer;                 -- (the integer FOR loops declare their own k)
BEGIN
    IF for_user IS NULL THEN
        RAISE EXCEPTION 'a user must be given' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF recent IS NULL OR recent < 1 OR recent > 500 THEN
        RAISE EXCEPTION 'recent must be between 1 and 500, not %', recent
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF threshold IS NULL THEN
        SELECT m.cluster_threshold INTO threshold
        FROM study_embed.model_thresholds m
        WHERE m.model = study_embed.served_model();
        threshold := coalesce(threshold, 0.75);
    END IF;
    SELECT array_agg(x.id ORDER BY x.answered_at DESC, x.id),
           array_agg(x.answered_at ORDER BY x.answered_at DESC, x.id),
           array_agg(x.question_text ORDER BY x.answered_at DESC, x.id)
    INTO qids, wrong_at, texts
    FROM (SELECT w.study_question_id AS id, w.answered_at, q.question_text
          FROM (SELECT DISTINCT ON (t.study_question_id)
                       t.study_question_id, t.answered_at, t.is_correct
                FROM public.study_question_attempts t
                WHERE t.user_id = for_user
                ORDER BY t.study_question_id, t.answered_at DESC) w      -- latest attempt
          JOIN public.study_questions q ON q.id = w.study_question_id AND q.user_id = for_user
          WHERE NOT w.is_correct AND q.deleted_at IS NULL AND q.embedding IS NOT NULL
            AND q.embedding_model = study_embed.served_model()
          ORDER BY w.answered_at DESC, w.study_question_id
          LIMIT recent) x;
    n := coalesce(cardinality(qids), 0);
    IF n = 0 THEN
        RETURN;
    END IF;
    -- every pair once, in one statement: the only n^2 step.  The vectors are read out of TOAST
    -- once, into an array (a join of the table with itself would fetch both per pair).  The
    -- join is on a constant (one), so that it can be a hash join: a nested loop copies every
    -- 4 kB row of its inner side out of the CTE's store once per outer row, which cost more
    -- than the distances (BENCHMARKS.md).
    WITH v AS MATERIALIZED (
        SELECT u.i::integer AS i, 1 AS one, u.v
        FROM unnest((SELECT array_agg(q.embedding ORDER BY x.i)
                     FROM unnest(qids) WITH ORDINALITY x(id, i)
                     JOIN public.study_questions q ON q.id = x.id)) WITH ORDINALITY u(v, i)),
    close AS (
        SELECT p.i, p.j, p.sim
        FROM (SELECT x.i, y.i AS j, 1 - study_embed._cosine_distance(x.v, y.v) AS sim
              FROM v x JOIN v y ON x.one = y.one AND x.i < y.i) p
        WHERE p.sim >= threshold),
    both_ways AS (
        SELECT l.i, l.j, l.sim FROM close l
        UNION ALL
        SELECT l.j, l.i, l.sim FROM close l)
    SELECT (SELECT array_agg(e.j ORDER BY e.i, e.j) FROM both_ways e),
           (SELECT array_agg(e.sim ORDER BY e.i, e.j) FROM both_ways e),
           (SELECT array_agg(1 - study_embed._cosine_distance(x.v, x.v) ORDER BY x.i) FROM v x),
           (SELECT array_agg(coalesce(d.n, 0) ORDER BY x.i)
            FROM v x LEFT JOIN (SELECT e.i, count(*)::integer AS n FROM both_ways e GROUP BY e.i) d
                 ON d.i = x.i)
    INTO b, sim, self_sim, degree;
    first := array_fill(1, ARRAY[n + 1]);
    FOR k IN 1..n LOOP
        first[k + 1] := first[k] + degree[k];
    END LOOP;
    assigned := array_fill(0, ARRAY[n]);
    LOOP
        -- the unplaced question with the most unplaced close neighbours; ties: the most
        -- recently missed (the lowest index)
        best := NULL;
        FOR k IN 1..n LOOP
            IF assigned[k] = 0 AND (best IS NULL OR degree[k] > degree[best]) THEN
                best := k;
            END IF;
        END LOOP;
        EXIT WHEN best IS NULL;
        IF degree[best] = 0 THEN
            -- nobody left has an unplaced close neighbour: the rest are clusters of one, in
            -- question order (what the loop would make, one scan per question, without it)
            FOR k IN best..n LOOP
                CONTINUE WHEN assigned[k] <> 0;
                c := c + 1;
                cluster := c;
                representative_id := qids[k];
                question_id := qids[k];
                similarity := self_sim[k];
                last_wrong_at := wrong_at[k];
                question_text := texts[k];
                RETURN NEXT;
            END LOOP;
            EXIT;
        END IF;
        -- it and its unplaced close neighbours, in question order
        members := ARRAY[best];
        member_sims := ARRAY[self_sim[best]];
        FOR k IN first[best]..first[best + 1] - 1 LOOP
            IF assigned[b[k]] = 0 THEN
                members := members || b[k];
                member_sims := member_sims || sim[k];
            END IF;
        END LOOP;
        c := c + 1;
        FOREACH j IN ARRAY members LOOP
            assigned[j] := c;
        END LOOP;
        FOR j, member_sim IN SELECT u.m, u.s FROM unnest(members, member_sims) u(m, s)
                             ORDER BY u.m LOOP
            cluster := c;
            representative_id := qids[best];
            question_id := qids[j];
            similarity := member_sim;
            last_wrong_at := wrong_at[j];
            question_text := texts[j];
            RETURN NEXT;
        END LOOP;
        -- the questions just placed no longer count as anybody's unplaced neighbours
        FOREACH j IN ARRAY members LOOP
            FOR k IN first[j]..first[j + 1] - 1 LOOP
                IF assigned[b[k]] = 0 THEN
                    degree[b[k]] := degree[b[k]] - 1;
                END IF;
            END LOOP;
        END LOOP;
    END LOOP;
END;
$$;
COMMENT ON FUNCTION study_embed.wrong_answer_clusters(bigint, integer, real) IS
    'Groups the questions a user most recently answered wrongly into clusters of related '
    'questions (greedy threshold clustering around representatives).';
