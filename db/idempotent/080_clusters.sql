-- 080_clusters.sql — re-runnable.  Wrong-answer clusters: the questions a user keeps getting
-- wrong, grouped by concept ("I keep missing capitals"), each group named (SECURITY INVOKER,
-- tenant-explicit like 060_search.sql, on its _cosine_distance()).
--
-- psql variables: :"vector_schema".

-- pgvector's `+` and inner_product(), schema-qualified (as _cosine_distance).
CREATE OR REPLACE FUNCTION study_embed._vector_add(a :"vector_schema".vector,
                                                   b :"vector_schema".vector)
RETURNS :"vector_schema".vector
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN a OPERATOR(:"vector_schema".+) b;

CREATE OR REPLACE FUNCTION study_embed._inner_product(a :"vector_schema".vector,
                                                      b :"vector_schema".vector)
RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN :"vector_schema".inner_product(a, b);

-- pgvector's l2_normalize(), schema-qualified: a server need not send unit vectors.
CREATE OR REPLACE FUNCTION study_embed._unit(v :"vector_schema".vector)
RETURNS :"vector_schema".vector
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN :"vector_schema".l2_normalize(v);

-- A word of a question as a cluster's name may use it: lower case, a Korean particle taken off
-- its end (수도는 → 수도, 왕은 → 왕; what is left keeps two letters, or one before 은/는/을/를/
-- 의), NULL for the words every question has (다음, 것은, which, the).  Only for naming: nothing
-- is searched with it.  One expression, so that the planner inlines it.
CREATE OR REPLACE FUNCTION study_embed._cluster_word(word text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN nullif(
    CASE WHEN char_length(regexp_replace(lower(word), '(에서|으로|에게|까지|부터|이란|은|는|이|'
                                                      '가|을|를|의|에|로|와|과|란|도)$', '')) >= 2
              OR lower(word) ~ '^.[은는을를의]$'
         THEN regexp_replace(lower(word), '(에서|으로|에게|까지|부터|이란|은|는|이|'
                                          '가|을|를|의|에|로|와|과|란|도)$', '')
         ELSE lower(word) END
    || CASE WHEN lower(word) ~ '^([0-9]+|[a-z])$'
                 OR lower(word) = ANY ('{다음, 중, 것, 옳은, 옳지, 알맞은, 무엇, 무엇인가, 누구,
                                         누구인가, 어디, 어디인가, 어느, 몇, 있는, 없는, 하는,
                                         되는, 한, 된, 그, 이, 위한, 대한, 가장, 때, 수, 해당하는,
                                         않은, 것은, 인가, 말은, 단어는, 뜻으로, 뜻, 보기, 문제,
                                         나타내, 나타내는, 관련된, 설명하는,
                                         a, an, the, of, in, on, to, for, and, or, is, are, was,
                                         were, which, what, who, whom, how, many, much, does,
                                         did, do, by, with, at, from, its, it, this, that, as,
                                         be, most, known, called, there}'::text[])
            THEN NULL ELSE '' END,
    '');
COMMENT ON FUNCTION study_embed._cluster_word(text) IS
    'A question word for a cluster''s name: lower case, a Korean particle off its end, NULL for '
    'words every question has.';

-- Average linkage over unit vectors (_unit()): groups join only while the average cosine
-- similarity over all pairs of their questions is at least `threshold`.  The candidate joins are
-- the close pairs (similarity >= threshold; two groups whose average reaches it have at least
-- one), taken from the closest down, a union-find joining their groups when the average still
-- holds.  The average of two groups is the inner product of their vector sums over the product of
-- their sizes, so each check is one product whatever the groups' sizes.  Passes repeat (three at
-- most) until nothing joins: a group that grew may now reach a neighbour it did not.  Two
-- questions whose subjects are both set and differ are never a close pair.  Returns each
-- question's group (the index of one of its members, the union-find's root), in the order given.
-- (v is a working copy: v[root] becomes the sum of its group.  PL/pgSQL cannot declare a pgvector
-- variable of its own while search_path is pinned, but its parameters are variables.)
CREATE OR REPLACE FUNCTION study_embed._average_linkage(
    v :"vector_schema".vector[], subjects text[], threshold real)
RETURNS integer[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    n integer := coalesce(cardinality(v), 0);
    pairs bigint[];            -- the close pairs, closest first (see below)
    size integer[];
    a integer;
    b integer;
    joined integer;
    passes integer := 0;
    groups integer;            -- how many groups there are
    grp integer[];
BEGIN
    IF n = 0 THEN
        RETURN '{}'::integer[];
    END IF;
    IF n > 1023 THEN
        RAISE EXCEPTION '_average_linkage: at most 1023 questions, not %', n
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- every pair once, in one statement: the only n^2 step.  The join is on a constant (one),
    -- so that it can be a hash join: a nested loop copies every 4 kB row of its inner side out
    -- of the CTE's store once per outer row, which cost more than the distances (BENCHMARKS.md).
    -- One array, one sort of one bigint per pair: (1 - similarity) in steps of 2^-20, then the
    -- pair packed as i * 1024 + j in the low 20 bits.  Ascending, that is the closest first and,
    -- within a millionth of similarity, by (i, j): the order of (similarity DESC, i, j) but for
    -- pairs closer than that, sorted as one int8 instead of three keys (BENCHMARKS.md).
    pairs := array(
        WITH x AS MATERIALIZED (
            SELECT u.i::integer AS i, 1 AS one, s.subject, u.v
            FROM unnest(v) WITH ORDINALITY u(v, i)
            JOIN unnest(subjects) WITH ORDINALITY s(subject, i) ON s.i = u.i),
        close AS (
            SELECT p.i, p.j, p.sim
            FROM (SELECT x.i, y.i AS j, study_embed._inner_product(x.v, y.v) AS sim
                  FROM x JOIN x y ON x.one = y.one AND x.i < y.i
                  WHERE x.subject IS NULL OR y.subject IS NULL OR x.subject = y.subject
                  OFFSET 0) p     -- not pulled up: each product computed once, not again for
            WHERE p.sim >= threshold)   -- the filter (pg_stat_user_functions counted both)
        SELECT round((1 - c.sim) * 1048576)::bigint * 1048576 + c.i * 1024 + c.j AS key
        FROM close c
        ORDER BY key);
    grp := array(SELECT generate_series(1, n));
    size := array_fill(1, ARRAY[n]);
    groups := n;
    LOOP
        joined := 0;
        passes := passes + 1;
        FOR k IN 1..coalesce(cardinality(pairs), 0) LOOP
            a := ((pairs[k] % 1048576) / 1024)::integer;
            WHILE grp[a] <> a LOOP
                grp[a] := grp[grp[a]];
                a := grp[a];
            END LOOP;
            b := (pairs[k] % 1024)::integer;
            WHILE grp[b] <> b LOOP
                grp[b] := grp[grp[b]];
                b := grp[b];
            END LOOP;
            CONTINUE WHEN a = b OR study_embed._inner_product(v[a], v[b])
                                   < threshold::double precision * size[a] * size[b];
            IF size[a] < size[b] THEN       -- the bigger group's root stays
                a := a # b; b := a # b; a := a # b;
            END IF;
            grp[b] := a;
            size[a] := size[a] + size[b];
            v[a] := study_embed._vector_add(v[a], v[b]);
            joined := joined + 1;
            groups := groups - 1;
            EXIT WHEN groups = 1;      -- one group: nothing left to join
        END LOOP;
        EXIT WHEN joined = 0 OR passes >= 3 OR groups = 1;
    END LOOP;
    FOR k IN 1..n LOOP
        a := k;
        WHILE grp[a] <> a LOOP
            a := grp[a];
        END LOOP;
        grp[k] := a;
    END LOOP;
    RETURN grp;
END;
$$;

-- Per question (in the order given, unit vectors): the index of its group's representative, the
-- member whose vector is closest to the group's mean (the largest product with the group's
-- sum), and its cosine similarity to that representative.
CREATE OR REPLACE FUNCTION study_embed._representatives(v :"vector_schema".vector[], grp integer[])
RETURNS TABLE (i integer, rep integer, similarity double precision)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    WITH m AS (
        SELECT u.i::integer AS i, g.g, u.v
        FROM unnest(v) WITH ORDINALITY u(v, i)
        JOIN unnest(grp) WITH ORDINALITY g(g, i) ON g.i = u.i),
    total AS (
        SELECT m.g, :"vector_schema".sum(m.v) AS s FROM m GROUP BY m.g),
    r AS (
        SELECT DISTINCT ON (m.g) m.g, m.i AS rep, m.v
        FROM m JOIN total t ON t.g = m.g
        ORDER BY m.g, study_embed._inner_product(m.v, t.s) DESC, m.i)
    SELECT m.i, r.rep, study_embed._inner_product(m.v, r.v)
    FROM m JOIN r ON r.g = m.g
    ORDER BY m.i;
END;

-- Wrong-answer clusters: the questions a user most recently got wrong (latest attempt wrong, the
-- `recent` most recent of them), grouped by concept with _average_linkage() over the served
-- model's vectors.  Measured against concepts by `make eval` (BENCHMARKS.md): the greedy stars
-- around a representative at a near-duplicate threshold that this replaced split a learner's
-- weak spots into crumbs.  Without a threshold, the served model's
-- (model_thresholds.cluster_threshold), else 0.75.
--
-- Each cluster is named (cluster_name): its members' common scope where they share one, else
-- their common subject and the words at least half of them use (two at least; of its 12 most
-- recently missed; _cluster_word), else the representative's text (a question alone: its
-- text).  `similarity` is a member's cosine similarity to the representative
-- (_representatives).  Clusters come biggest first (ties: the most recently missed), members in
-- the order they were missed.
--
-- Cost (BENCHMARKS.md: 500 wrong answers): the pairwise similarities (one set-based statement
-- over vectors read once), then one pass over the close pairs.
DO $$
BEGIN
    -- the result gained cluster_name: CREATE OR REPLACE cannot change a result type
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_proc
               WHERE oid = to_regprocedure('study_embed.wrong_answer_clusters(bigint,integer,real)')
                 AND NOT ('cluster_name' = ANY (proargnames))) THEN
        DROP FUNCTION study_embed.wrong_answer_clusters(bigint, integer, real);
    END IF;
END;
$$;
CREATE OR REPLACE FUNCTION study_embed.wrong_answer_clusters(
    for_user bigint, recent integer DEFAULT 50, threshold real DEFAULT NULL)
RETURNS TABLE (cluster integer, representative_id bigint, question_id bigint,
               similarity double precision, question_text text, last_wrong_at timestamptz,
               cluster_name text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
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
    RETURN QUERY
    WITH wrong AS MATERIALIZED (
        SELECT row_number() OVER (ORDER BY x.answered_at DESC, x.id)::integer AS i, x.*
        FROM (SELECT w.study_question_id AS id, w.answered_at, q.question_text, q.subject,
                     nullif(lower(btrim(q.subject)), '') AS subject_key,
                     nullif(btrim(q.scope), '') AS scope, q.embedding
              FROM (SELECT DISTINCT ON (t.study_question_id)
                           t.study_question_id, t.answered_at, t.is_correct
                    FROM public.study_question_attempts t
                    WHERE t.user_id = for_user
                    ORDER BY t.study_question_id, t.answered_at DESC) w      -- latest attempt
              JOIN public.study_questions q
                ON q.id = w.study_question_id AND q.user_id = for_user
              WHERE NOT w.is_correct AND q.deleted_at IS NULL AND q.embedding IS NOT NULL
                AND q.embedding_model = (SELECT study_embed.served_model())   -- once, not per row
              ORDER BY w.answered_at DESC, w.study_question_id
              LIMIT recent) x),
    grouped AS MATERIALIZED (
        SELECT study_embed._average_linkage(u.v, u.subjects, threshold) AS grp, u.v
        FROM (SELECT array_agg(study_embed._unit(w.embedding) ORDER BY w.i) AS v,
                     array_agg(w.subject_key ORDER BY w.i) AS subjects
              FROM wrong w) u),
    m AS MATERIALIZED (
        SELECT w.i, w.id, w.answered_at, w.question_text, w.subject, w.subject_key, w.scope,
               r.rep, r.similarity, gr.grp[w.i] AS g
        FROM grouped gr
        CROSS JOIN LATERAL study_embed._representatives(gr.v, gr.grp) r
        JOIN wrong w ON w.i = r.i),
    groups AS (
        SELECT m.g, count(*) AS members, min(m.i) AS first_i, min(m.rep) AS rep,
               CASE WHEN count(m.scope) = count(*) AND count(DISTINCT m.scope) = 1
                    THEN min(m.scope) END AS scope,
               CASE WHEN count(m.subject_key) = count(*) AND count(DISTINCT m.subject_key) = 1
                    THEN min(btrim(m.subject)) END AS subject
        FROM m GROUP BY m.g),
    words AS (      -- per group: the words at least half of its members use (two at least)
        SELECT y.g, string_agg(y.w, ', ' ORDER BY y.r) AS words
        FROM (SELECT c.g, c.w,
                     row_number() OVER (PARTITION BY c.g ORDER BY c.uses DESC, c.first_at) AS r
              FROM (SELECT m.g, t.w, count(DISTINCT m.i) AS uses,
                           min(m.i * 10000 + t.pos) AS first_at
                    FROM (SELECT m.*, row_number() OVER (PARTITION BY m.g ORDER BY m.i) AS nth
                          FROM m) m
                    JOIN groups gs ON gs.g = m.g AND gs.members >= 2 AND m.nth <= 12
                    CROSS JOIN LATERAL (
                        SELECT study_embed._cluster_word(s.tok) AS w, s.pos
                        FROM regexp_split_to_table(m.question_text, '[[:space:][:punct:]·]+')
                             WITH ORDINALITY s(tok, pos)) t
                    WHERE t.w IS NOT NULL
                    GROUP BY m.g, t.w) c
              JOIN groups gs ON gs.g = c.g
              WHERE c.uses >= 2 AND c.uses * 2 >= least(gs.members, 12)) y
        WHERE y.r <= 3
        GROUP BY y.g),
    named AS (
        SELECT gs.g, row_number() OVER (ORDER BY gs.members DESC, gs.first_i)::integer AS c,
               CASE WHEN gs.members = 1
                    THEN (SELECT left(m.question_text, 60) FROM m WHERE m.i = gs.rep)
                    ELSE coalesce(gs.scope, nullif(concat_ws(': ', gs.subject, wd.words), ''),
                                  (SELECT left(m.question_text, 60) FROM m WHERE m.i = gs.rep))
               END AS name
        FROM groups gs LEFT JOIN words wd ON wd.g = gs.g)
    SELECT nd.c, rm.id, m.id, m.similarity, m.question_text, m.answered_at, nd.name
    FROM m
    JOIN named nd ON nd.g = m.g
    JOIN m rm ON rm.i = m.rep
    ORDER BY nd.c, m.i;
END;
$$;
COMMENT ON FUNCTION study_embed.wrong_answer_clusters(bigint, integer, real) IS
    'Groups the questions a user most recently answered wrongly by concept (average linkage '
    'over the served model''s cosine similarities), each group named.';
