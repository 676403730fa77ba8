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

-- The same for the sparse vectors of questions' words (_word_vector).
CREATE OR REPLACE FUNCTION study_embed._inner_product(a :"vector_schema".sparsevec,
                                                      b :"vector_schema".sparsevec)
RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN :"vector_schema".inner_product(a, b);

-- A vector followed by a question's words (_word_vector, made dense) times `factor`: the product
-- of two is the product of the vectors + factor^2 x the cosine of the words (pgvector's `||`).
CREATE OR REPLACE FUNCTION study_embed._with_words(v :"vector_schema".vector,
                                                   words :"vector_schema".sparsevec,
                                                   factor double precision)
RETURNS :"vector_schema".vector
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN v OPERATOR(:"vector_schema".||)
    (CAST(words AS :"vector_schema".vector) OPERATOR(:"vector_schema".*)
     CAST(array_fill(factor::real, ARRAY[:"vector_schema".vector_dims(
              CAST(words AS :"vector_schema".vector))]) AS :"vector_schema".vector));

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

-- A question's words as wrong_answer_clusters() compares them: each distinct word
-- (_cluster_word's) hashed into one of 1,024 buckets (_word_bucket), the buckets hit as a unit
-- sparse vector (_word_vector: equal values in the buckets hit).  The product of two is the
-- cosine of their word sets (two words that share a bucket count as one); sparse, it costs a
-- third of a dense 1,024-value product (BENCHMARKS.md).
CREATE OR REPLACE FUNCTION study_embed._word_bucket(word text)
RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN (hashtext(word) & 1023) + 1;

-- The buckets in any order, repeats and values outside 1..1024 ignored; no values for none.
-- Made from pgvector's text form (`{3:1,17:1}/1024`, numbers only).
CREATE OR REPLACE FUNCTION study_embed._word_vector(buckets integer[])
RETURNS :"vector_schema".sparsevec
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN :"vector_schema".l2_normalize(CAST(
    '{' || coalesce((SELECT string_agg(DISTINCT h::text || ':1', ',')
                     FROM unnest(buckets) h WHERE h BETWEEN 1 AND 1024), '') || '}/1024'
    AS :"vector_schema".sparsevec));

-- Average linkage over unit vectors (_unit()): groups join only while the average similarity
-- over all pairs of their questions is at least `threshold`.  A pair's similarity is the cosine
-- of its vectors or, given the questions' words (_word_vector()) and a word weight w,
-- (1 - w) x that cosine + w x the cosine of their words.  The candidate joins are
-- the close pairs (similarity >= threshold; two groups whose average reaches it have at least
-- one), taken from the closest down, a union-find joining their groups when the average still
-- holds.  The average of two groups is the inner product of their vector sums over the product of
-- their sizes (with words, each vector is followed by its words, _with_words()), so each check
-- is one product whatever the groups' sizes.  Passes repeat (three at most) until nothing joins: a group that grew may
-- now reach a neighbour it did not.  Two questions whose subjects are both set and differ are
-- never a close pair.  Returns each question's group (the index of one of its members, the
-- union-find's root), in the order given.
-- (v is a working copy: v[root] becomes the sum of its group.  PL/pgSQL cannot declare a pgvector
-- variable of its own while search_path is pinned, but its parameters are variables.)
-- (It gained the words: the three-argument function it was is dropped, and a call with three
-- arguments finds this one.)
DROP FUNCTION IF EXISTS study_embed._average_linkage(:"vector_schema".vector[], text[], real);
CREATE OR REPLACE FUNCTION study_embed._average_linkage(
    v :"vector_schema".vector[], subjects text[], threshold real,
    words :"vector_schema".sparsevec[] DEFAULT NULL, word_weight real DEFAULT 0)
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
    w double precision := CASE WHEN words IS NULL THEN 0
                               ELSE coalesce(word_weight, 0)::double precision END;
    reach double precision;    -- with words: the least cosine a close pair can have
    bar double precision := threshold::double precision;  -- what a pair of groups must reach
BEGIN
    IF n = 0 THEN
        RETURN '{}'::integer[];
    END IF;
    IF n > 1023 THEN
        RAISE EXCEPTION '_average_linkage: at most 1023 questions, not %', n
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF w < 0 OR w >= 1 THEN
        RAISE EXCEPTION '_average_linkage: word_weight must be at least 0 and below 1, not %', w
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF w > 0 AND cardinality(words) <> n THEN
        RAISE EXCEPTION '_average_linkage: % questions but words of %', n, cardinality(words)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- every pair once, in one statement: the only n^2 step.  The join is on a constant (one),
    -- so that it can be a hash join: a nested loop copies every 4 kB row of its inner side out
    -- of the CTE's store once per outer row, which cost more than the distances (BENCHMARKS.md).
    -- One array, one sort of one bigint per pair: (1 - similarity) in steps of 2^-20, then the
    -- pair packed as i * 1024 + j in the low 20 bits.  Ascending, that is the closest first and,
    -- within a millionth of similarity, by (i, j): the order of (similarity DESC, i, j) but for
    -- pairs closer than that, sorted as one int8 instead of three keys (BENCHMARKS.md).
    IF w = 0 THEN
        pairs := array(
            WITH x AS MATERIALIZED (
                SELECT u.i::integer AS i, 1 AS one, u.subject, u.v
                FROM unnest(v, subjects) WITH ORDINALITY u(v, subject, i)),
            close AS (
                SELECT p.i, p.j, p.sim
                FROM (SELECT x.i, y.i AS j, study_embed._inner_product(x.v, y.v) AS sim
                      FROM x JOIN x y ON x.one = y.one AND x.i < y.i
                      WHERE x.subject IS NULL OR y.subject IS NULL OR x.subject = y.subject
                      OFFSET 0) p     -- not pulled up: each product computed once, not again
                WHERE p.sim >= threshold)   -- for the filter (pg_stat_user_functions counted both)
            SELECT round((1 - c.sim) * 1048576)::bigint * 1048576 + c.i * 1024 + c.j AS key
            FROM close c
            ORDER BY key);
    ELSE
        -- with words: their product only for a pair whose cosine leaves the threshold within
        -- reach (words that are all the same would add w).  Two statements, not one with a CASE
        -- per pair: that cost the vectors alone 5-8 % at 500 of one topic (every pair close).
        reach := (threshold - w) / (1 - w);
        pairs := array(
            WITH x AS MATERIALIZED (
                SELECT u.i::integer AS i, 1 AS one, u.subject, u.v, u.words
                FROM unnest(v, subjects, words) WITH ORDINALITY u(v, subject, words, i)),
            close AS (
                SELECT p.i, p.j, p.sim
                FROM (SELECT q.i, q.j,
                             (1 - w) * q.cos + w * study_embed._inner_product(q.xw, q.yw) AS sim
                      FROM (SELECT x.i, y.i AS j, study_embed._inner_product(x.v, y.v) AS cos,
                                   x.words AS xw, y.words AS yw
                            FROM x JOIN x y ON x.one = y.one AND x.i < y.i
                            WHERE x.subject IS NULL OR y.subject IS NULL
                               OR x.subject = y.subject
                            OFFSET 0) q
                      WHERE q.cos >= reach
                      OFFSET 0) p
                WHERE p.sim >= threshold)
            SELECT round((1 - c.sim) * 1048576)::bigint * 1048576 + c.i * 1024 + c.j AS key
            FROM close c
            ORDER BY key);
    END IF;
    IF w > 0 THEN
        -- from here on each vector is followed by its words times sqrt(w / (1 - w)): the product
        -- of two groups' sums is their summed similarity over (1 - w)
        FOR k IN 1..n LOOP
            v[k] := study_embed._with_words(v[k], words[k], sqrt(w / (1 - w)));
        END LOOP;
        bar := threshold / (1 - w);
    END IF;
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
                                   < bar * size[a] * size[b];
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
-- weak spots into crumbs.  Questions are compared by their vectors and, at `word_weight`, by
-- the words they share, their own and their choices' (_word_vector; 0: the vectors alone).
-- Without a threshold or a word weight, the served model's (model_thresholds.cluster_threshold
-- and cluster_word_weight, chosen together by make eval), else 0.75 and 0.
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
-- (it gained word_weight: the three-argument function it was is dropped, and a call with
-- three arguments finds this one)
DROP FUNCTION IF EXISTS study_embed.wrong_answer_clusters(bigint, integer, real);
CREATE OR REPLACE FUNCTION study_embed.wrong_answer_clusters(
    for_user bigint, recent integer DEFAULT 50, threshold real DEFAULT NULL,
    word_weight real DEFAULT NULL)
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
    IF word_weight < 0 OR word_weight >= 1 THEN
        RAISE EXCEPTION 'word_weight must be at least 0 and below 1, not %', word_weight
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF threshold IS NULL OR word_weight IS NULL THEN
        SELECT coalesce(threshold, m.cluster_threshold),
               coalesce(word_weight, m.cluster_word_weight)
        INTO threshold, word_weight
        FROM study_embed.model_thresholds m
        WHERE m.model = study_embed.served_model();
        threshold := coalesce(threshold, 0.75);
        word_weight := coalesce(word_weight, 0);
    END IF;
    RETURN QUERY
    WITH wrong AS MATERIALIZED (
        SELECT row_number() OVER (ORDER BY x.answered_at DESC, x.id)::integer AS i, x.*
        FROM (SELECT w.study_question_id AS id, w.answered_at, q.question_text, q.subject,
                     q.choice_1, q.choice_2, q.choice_3, q.choice_4,
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
    -- the words of each question and its choices, only when they weigh: each distinct token
    -- of the batch through _cluster_word() once
    tokens AS MATERIALIZED (
        SELECT w.i, t.tok
        FROM wrong w
        CROSS JOIN LATERAL regexp_split_to_table(
            lower(concat_ws(' ', w.question_text, w.choice_1, w.choice_2, w.choice_3,
                            w.choice_4)),
            '[[:space:][:punct:]·]+') t(tok)
        WHERE word_weight > 0),
    question_words AS (
        SELECT t.i, array_agg(n.bucket) AS hits     -- (_word_vector takes each bucket once)
        FROM tokens t
        JOIN (SELECT d.tok, study_embed._word_bucket(study_embed._cluster_word(d.tok)) AS bucket
              FROM (SELECT DISTINCT tokens.tok FROM tokens) d
              OFFSET 0) n ON n.tok = t.tok      -- (not pushed down: once per distinct token)
        WHERE n.bucket IS NOT NULL
        GROUP BY t.i),
    grouped AS MATERIALIZED (
        SELECT study_embed._average_linkage(u.v, u.subjects, threshold, u.words, word_weight)
                   AS grp, u.v
        FROM (SELECT array_agg(study_embed._unit(w.embedding) ORDER BY w.i) AS v,
                     array_agg(w.subject_key ORDER BY w.i) AS subjects,
                     array_agg(study_embed._word_vector(wd.hits) ORDER BY w.i)
                         FILTER (WHERE word_weight > 0) AS words
              FROM wrong w LEFT JOIN question_words wd ON wd.i = w.i) u),
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
COMMENT ON FUNCTION study_embed.wrong_answer_clusters(bigint, integer, real, real) IS
    'Groups the questions a user most recently answered wrongly by concept (average linkage '
    'over the served model''s cosine similarities and, at word_weight, the words the questions '
    'share), each group named.';
