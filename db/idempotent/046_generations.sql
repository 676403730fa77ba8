-- 046_generations.sql — re-runnable.  Model changes without a wrong answer.
--
-- The table holds two slots of the same ten columns:
--
--   served   embedding, embedding_status, embedding_model, embedding_updated_at,
--            embedding_source_sha256, embedding_claim_token, embedding_due_at,
--            embedding_queued_at, embedding_attempts, embedding_last_error
--   shadow   embedding_shadow, embedding_shadow_status, embedding_shadow_model, ... (the same
--            names with _shadow after `embedding`), only while a model change is in progress
--
-- study_embed.generations (0008) says which model and dimension each slot holds.  Search, the
-- near-duplicate pass and the clusters read the served slot only, and only its rows embedded
-- by the served model: every comparison is one model's vectors with the same model's.
--
-- A change, step by step (`study-embed model begin|switch|drop`, which call the functions
-- below as the owner of study_questions and re-apply db/idempotent in the same transaction):
--
--   begin   adds the shadow columns (catalog only: their defaults queue every row at once, as
--           for an insert), their CHECK constraints, a queue index and a partial HNSW index of
--           the new dimension.  Listeners that have an embedder for the new model fill it, at
--           a lower priority than the served slot's queue (claim_shadow & co. below).
--   switch  once every live row is ready in the shadow slot (refused before, with the count
--           missing, unless forced): the two slots trade their column, constraint and index
--           names in one transaction (catalog only; no row is rewritten).  Every definition
--           that binds columns when it is created (triggers, views, SQL-standard bodies) is
--           created again in the same transaction, so search never sees a half-switched bank.
--           The previous generation stays in the shadow slot: text edits keep queuing it, and a
--           switch back is the same step again.
--   drop    drops the shadow columns (and with them their indexes and constraints).
--
-- The queue functions of the shadow slot mirror claim/complete/fail/release (040_queue.sql)
-- column for column: after a switch each set acts on the other generation, because PL/pgSQL
-- resolves column names when it runs.  The shadow slot keeps no stale vector (it is not
-- served): an edit of the text empties it.
--
-- psql variables: :"vector_schema".

-- Each slot's model and dimension (what a listener reads before it drains).
CREATE OR REPLACE FUNCTION study_embed.generation_models()
RETURNS TABLE (slot text, model text, dimension integer)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT g.slot, g.model, g.dimension FROM study_embed.generations g
    ORDER BY g.slot = 'shadow', g.slot;
END;
COMMENT ON FUNCTION study_embed.generation_models() IS
    'The served generation and the shadow one (during a model change): model and dimension.';

-- Does the table have the shadow slot's columns now?
CREATE OR REPLACE FUNCTION study_embed._has_shadow()
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
RETURN EXISTS (SELECT 1 FROM pg_attribute a
               WHERE a.attrelid = 'public.study_questions'::regclass
                 AND a.attname = 'embedding_shadow_status' AND NOT a.attisdropped);

-- The generations, their models and dimensions, and how far each one covers the live rows
-- (ready: embedded from the current text by that generation's model).
CREATE OR REPLACE FUNCTION study_embed.generation_status()
RETURNS TABLE (slot text, model text, dimension integer, role text, since timestamptz,
               live bigint, ready bigint, failed bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n_live bigint;
    served_ready bigint;
    served_failed bigint;
BEGIN
    SELECT coalesce(sum(s.live), 0)::bigint,
           coalesce(sum(s.live) FILTER (WHERE s.status = 'ready'), 0)::bigint,
           coalesce(sum(s.live) FILTER (WHERE s.status = 'failed'), 0)::bigint
    INTO n_live, served_ready, served_failed
    FROM study_embed.status s;
    RETURN QUERY
    SELECT g.slot, g.model, g.dimension, 'served'::text, g.since, n_live, served_ready,
           served_failed
    FROM study_embed.generations g WHERE g.slot = 'served';
    IF study_embed._has_shadow() THEN
        RETURN QUERY
        SELECT g.slot, g.model, g.dimension,
               CASE WHEN g.was_served THEN 'previous' ELSE 'next' END, g.since, n_live, c.ready,
               c.failed
        FROM study_embed.generations g,
             (SELECT count(*) FILTER (WHERE q.embedding_shadow_status = 'ready') AS ready,
                     count(*) FILTER (WHERE q.embedding_shadow_status = 'failed') AS failed
              FROM public.study_questions q WHERE q.deleted_at IS NULL) c
        WHERE g.slot = 'shadow';
    END IF;
END;
$$;
COMMENT ON FUNCTION study_embed.generation_status() IS
    'The served generation and, during a model change, the shadow one (next, or previous after '
    'a switch): model, dimension, live rows and how many of them each has ready.';

-- ------------------------------------------------------------------------------------------
-- The shadow slot's state machine (the served slot's is 010_state_machine.sql)
-- ------------------------------------------------------------------------------------------

-- What is wrong with a row's shadow status and bookkeeping, or NULL: the served slot's
-- _inconsistency (010_state_machine.sql), of the columns, inlined into the guards.
CREATE OR REPLACE FUNCTION study_embed._shadow_inconsistency(
    status text, has_embedding boolean, model text, claim_token uuid, due_at timestamptz,
    queued_at timestamptz, last_error text)
RETURNS text
LANGUAGE sql IMMUTABLE
RETURN CASE status
    WHEN 'ready' THEN CASE
        WHEN NOT has_embedding THEN 'it has no embedding'
        WHEN model IS NULL THEN 'it has no model'
        WHEN claim_token IS NOT NULL OR queued_at IS NOT NULL THEN 'it is still queued' END
    WHEN 'pending' THEN CASE
        WHEN claim_token IS NULL OR due_at IS NULL THEN 'nobody claimed it' END
    WHEN 'failed' THEN CASE
        WHEN claim_token IS NOT NULL THEN 'it carries a claim token'
        WHEN last_error IS NULL THEN 'it has no error recorded' END
    ELSE CASE
        WHEN claim_token IS NOT NULL THEN 'it carries a claim token'
        WHEN due_at IS NULL OR queued_at IS NULL THEN 'it is not queued' END
END;

-- BEFORE INSERT, while the slot exists: a new row joins the shadow queue by the columns'
-- defaults; only the table's owner may insert it otherwise (a restored dump), consistent.
CREATE OR REPLACE FUNCTION study_embed._guard_shadow_insert()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    problem text;
BEGIN
    IF NOT pg_has_role(current_user,
                       (SELECT c.relowner FROM pg_class c WHERE c.oid = TG_RELID), 'USAGE') THEN
        RAISE EXCEPTION 'the embedding_shadow columns are managed by the embedding pipeline'
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Insert the question without them: it is queued for both generations.';
    END IF;
    problem := study_embed._shadow_inconsistency(
        NEW.embedding_shadow_status, NEW.embedding_shadow IS NOT NULL, NEW.embedding_shadow_model,
        NEW.embedding_shadow_claim_token, NEW.embedding_shadow_due_at,
        NEW.embedding_shadow_queued_at, NEW.embedding_shadow_last_error);
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION 'study_questions %: embedding_shadow_status % is inconsistent: %',
            NEW.id, NEW.embedding_shadow_status, problem
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END;
$$;

-- BEFORE UPDATE, while the slot exists: a client may not write the shadow columns; an edit of
-- the text queues the row again in the shadow slot too, without its vector (a shadow vector
-- is never served, and a stale one would only count as coverage it is not).  The pipeline's
-- moves are checked against the same transitions as the served slot's.
CREATE OR REPLACE FUNCTION study_embed._guard_shadow()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    actor text := study_embed._actor();
    text_changed boolean :=
        study_embed.render_question(OLD.question_text, OLD.choice_1, OLD.choice_2,
                                    OLD.choice_3, OLD.choice_4)
        IS DISTINCT FROM
        study_embed.render_question(NEW.question_text, NEW.choice_1, NEW.choice_2,
                                    NEW.choice_3, NEW.choice_4);
    problem text;
BEGIN
    IF actor = 'client' THEN
        IF (NEW.embedding_shadow_status, NEW.embedding_shadow_model,
            NEW.embedding_shadow_updated_at, NEW.embedding_shadow_source_sha256,
            NEW.embedding_shadow_claim_token, NEW.embedding_shadow_due_at,
            NEW.embedding_shadow_queued_at, NEW.embedding_shadow_attempts,
            NEW.embedding_shadow_last_error)
           IS DISTINCT FROM
           (OLD.embedding_shadow_status, OLD.embedding_shadow_model,
            OLD.embedding_shadow_updated_at, OLD.embedding_shadow_source_sha256,
            OLD.embedding_shadow_claim_token, OLD.embedding_shadow_due_at,
            OLD.embedding_shadow_queued_at, OLD.embedding_shadow_attempts,
            OLD.embedding_shadow_last_error)
           OR study_embed._vectors_differ(NEW.embedding_shadow, OLD.embedding_shadow) THEN
            RAISE EXCEPTION 'study_questions %: the embedding_shadow columns are managed by the '
                            'embedding pipeline', OLD.id
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'Edit the question: both generations are queued.';
        END IF;
    ELSIF text_changed THEN
        RAISE EXCEPTION 'study_embed.% must not change question text', actor;
    ELSIF NOT study_embed.transition_allowed(actor, OLD.embedding_shadow_status,
                                             NEW.embedding_shadow_status) THEN
        RAISE EXCEPTION 'study_questions %: embedding_shadow_status cannot go from % to % (by '
                        'study_embed.%)', OLD.id, OLD.embedding_shadow_status,
                        quote_nullable(NEW.embedding_shadow_status), actor
            USING ERRCODE = 'check_violation';
    END IF;
    IF text_changed THEN
        NEW.embedding_shadow := NULL;
        NEW.embedding_shadow_status := 'none';
        NEW.embedding_shadow_model := NULL;
        NEW.embedding_shadow_updated_at := NULL;
        NEW.embedding_shadow_source_sha256 := NULL;
        NEW.embedding_shadow_claim_token := NULL;
        NEW.embedding_shadow_due_at := now();
        NEW.embedding_shadow_queued_at := coalesce(OLD.embedding_shadow_queued_at, now());
        NEW.embedding_shadow_attempts := 0;
        NEW.embedding_shadow_last_error := NULL;
    END IF;
    problem := study_embed._shadow_inconsistency(
        NEW.embedding_shadow_status, NEW.embedding_shadow IS NOT NULL, NEW.embedding_shadow_model,
        NEW.embedding_shadow_claim_token, NEW.embedding_shadow_due_at,
        NEW.embedding_shadow_queued_at, NEW.embedding_shadow_last_error);
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION 'study_questions %: embedding_shadow_status % is inconsistent: %',
            NEW.id, NEW.embedding_shadow_status, problem
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END;
$$;
-- (the form of the row, which the guards called before _shadow_inconsistency)
DROP FUNCTION IF EXISTS study_embed._check_shadow_consistent(public.study_questions);

-- The triggers exist while the slot does (they name its columns); the switch creates them
-- again, bound to the columns that then carry the shadow names.
SELECT study_embed._has_shadow() AS study_embed_has_shadow \gset
\if :study_embed_has_shadow
CREATE OR REPLACE TRIGGER study_embed_guard_shadow_insert
    BEFORE INSERT ON public.study_questions
    FOR EACH ROW
    WHEN (NEW.embedding_shadow_status IS DISTINCT FROM 'none'
          OR NEW.embedding_shadow IS NOT NULL OR NEW.embedding_shadow_model IS NOT NULL
          OR NEW.embedding_shadow_updated_at IS NOT NULL
          OR NEW.embedding_shadow_source_sha256 IS NOT NULL
          OR NEW.embedding_shadow_claim_token IS NOT NULL
          OR NEW.embedding_shadow_due_at IS DISTINCT FROM now()
          OR NEW.embedding_shadow_queued_at IS DISTINCT FROM now()
          OR NEW.embedding_shadow_attempts IS DISTINCT FROM 0
          OR NEW.embedding_shadow_last_error IS NOT NULL)
    EXECUTE FUNCTION study_embed._guard_shadow_insert();

CREATE OR REPLACE TRIGGER study_embed_guard_shadow
    BEFORE UPDATE OF question_text, choice_1, choice_2, choice_3, choice_4,
        embedding_shadow, embedding_shadow_status, embedding_shadow_model,
        embedding_shadow_updated_at, embedding_shadow_source_sha256,
        embedding_shadow_claim_token, embedding_shadow_due_at, embedding_shadow_queued_at,
        embedding_shadow_attempts, embedding_shadow_last_error
    ON public.study_questions
    FOR EACH ROW
    WHEN ((OLD.question_text, OLD.choice_1, OLD.choice_2, OLD.choice_3, OLD.choice_4,
           OLD.embedding_shadow_status, OLD.embedding_shadow_model,
           OLD.embedding_shadow_updated_at, OLD.embedding_shadow_source_sha256,
           OLD.embedding_shadow_claim_token, OLD.embedding_shadow_due_at,
           OLD.embedding_shadow_queued_at, OLD.embedding_shadow_attempts,
           OLD.embedding_shadow_last_error)
          IS DISTINCT FROM
          (NEW.question_text, NEW.choice_1, NEW.choice_2, NEW.choice_3, NEW.choice_4,
           NEW.embedding_shadow_status, NEW.embedding_shadow_model,
           NEW.embedding_shadow_updated_at, NEW.embedding_shadow_source_sha256,
           NEW.embedding_shadow_claim_token, NEW.embedding_shadow_due_at,
           NEW.embedding_shadow_queued_at, NEW.embedding_shadow_attempts,
           NEW.embedding_shadow_last_error)
          OR (OLD.embedding_shadow IS NULL) <> (NEW.embedding_shadow IS NULL)
          OR OLD.embedding_shadow OPERATOR(:"vector_schema".<>) NEW.embedding_shadow)
    EXECUTE FUNCTION study_embed._guard_shadow();
\else
DROP TRIGGER IF EXISTS study_embed_guard_shadow_insert ON public.study_questions;
DROP TRIGGER IF EXISTS study_embed_guard_shadow ON public.study_questions;
\endif

-- ------------------------------------------------------------------------------------------
-- The shadow slot's queue: what a listener with an embedder for the shadow model calls once
-- the served slot's queue is empty
-- ------------------------------------------------------------------------------------------

-- The shadow generation's model and dimension, or an error saying there is none.
CREATE OR REPLACE FUNCTION study_embed._shadow(fn text)
RETURNS study_embed.generations
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    g study_embed.generations;
BEGIN
    SELECT * INTO g FROM study_embed.generations x WHERE x.slot = 'shadow';
    IF g.slot IS NULL OR NOT study_embed._has_shadow() THEN
        RAISE EXCEPTION '%: no model change is in progress', fn
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'study-embed model begin MODEL --dimension N starts one.';
    END IF;
    RETURN g;
END;
$$;

-- As claim(): up to batch_size claimable rows of the shadow slot, oldest first, skipping other
-- claimers' rows; an expired lease counts as a failed attempt, and a row whose attempts it used
-- up is parked failed instead of claimed.  Nothing when no change is in progress.
CREATE OR REPLACE FUNCTION study_embed.claim_shadow(batch_size integer DEFAULT 10,
                                                    lease interval DEFAULT '2 minutes')
RETURNS TABLE (id bigint, claim_token uuid, body text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    max_attempts smallint := (SELECT s.max_attempts FROM study_embed.settings s);
    ids bigint[];
    now_is text[];
    tokens uuid[];
    bodies text[];
BEGIN
    PERFORM study_embed._check_batch_size('claim_shadow', batch_size, 10000);
    IF lease IS NULL OR lease <= interval '0' THEN
        RAISE EXCEPTION 'claim_shadow: lease must be a positive interval, not %', lease
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT study_embed._has_shadow() THEN
        RETURN;
    END IF;
    PERFORM study_embed._set_actor('claim');
    LOOP    -- as claim(): a batch of parked rows only is followed by the next one
        WITH due AS (
            SELECT q.id,
                   q.embedding_shadow_status = 'pending'
                       AND q.embedding_shadow_attempts + 1 >= max_attempts AS exhausted
            FROM public.study_questions q
            WHERE q.deleted_at IS NULL AND q.embedding_shadow_queued_at <= now()  -- its index
              AND q.embedding_shadow_due_at <= now()
            ORDER BY q.embedding_shadow_queued_at, q.id
            LIMIT batch_size
            FOR UPDATE SKIP LOCKED
        ), claimed AS (
            UPDATE public.study_questions q
            SET embedding_shadow_status = CASE WHEN due.exhausted THEN 'failed' ELSE 'pending' END,
                embedding_shadow_claim_token = CASE WHEN due.exhausted THEN NULL
                                                    ELSE gen_random_uuid() END,
                embedding_shadow_due_at = CASE WHEN due.exhausted THEN NULL ELSE now() + lease END,
                embedding_shadow_queued_at = CASE WHEN due.exhausted THEN NULL
                                                  ELSE q.embedding_shadow_queued_at END,
                embedding_shadow_attempts = q.embedding_shadow_attempts
                    + CASE WHEN q.embedding_shadow_status = 'pending' THEN 1 ELSE 0 END,
                embedding_shadow_last_error = CASE WHEN q.embedding_shadow_status = 'pending'
                    THEN 'lease expired: the listener holding the claim did not finish'
                    ELSE q.embedding_shadow_last_error END
            FROM due
            WHERE q.id = due.id
            RETURNING q.id, q.embedding_shadow_status, q.embedding_shadow_claim_token,
                      study_embed.render_question(q.question_text, q.choice_1, q.choice_2,
                                                  q.choice_3, q.choice_4) AS body
        )
        SELECT array_agg(c.id), array_agg(c.embedding_shadow_status::text),
               array_agg(c.embedding_shadow_claim_token), array_agg(c.body)
        INTO ids, now_is, tokens, bodies
        FROM claimed c;
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
COMMENT ON FUNCTION study_embed.claim_shadow(integer, interval) IS
    'Claim up to batch_size questions for the shadow generation (a model change in progress); '
    'nothing when there is none.';

-- As complete(), for the shadow slot: only the shadow generation's model, only its dimension.
CREATE OR REPLACE FUNCTION study_embed.complete_shadow(ids bigint[], claim_tokens uuid[],
                                                       embeddings :"vector_schema".vector[],
                                                       model text)
RETURNS SETOF bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    g study_embed.generations := study_embed._shadow('complete_shadow');
BEGIN
    PERFORM study_embed._check_batch('complete_shadow', '{ids,claim_tokens,embeddings}',
        ARRAY[cardinality(ids), cardinality(claim_tokens), cardinality(embeddings)]);
    IF model IS DISTINCT FROM g.model THEN
        RAISE EXCEPTION 'complete_shadow: the shadow generation is model %, not %', g.model,
            quote_nullable(model)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM study_embed._set_actor('complete');
    RETURN QUERY
    UPDATE public.study_questions q
    SET embedding_shadow = c.embedding,
        embedding_shadow_status = 'ready',
        embedding_shadow_model = model,
        embedding_shadow_updated_at = now(),
        embedding_shadow_source_sha256 = study_embed.text_sha256(study_embed.render_question(
            q.question_text, q.choice_1, q.choice_2, q.choice_3, q.choice_4)),
        embedding_shadow_claim_token = NULL,
        embedding_shadow_due_at = NULL,
        embedding_shadow_queued_at = NULL,
        embedding_shadow_attempts = 0,
        embedding_shadow_last_error = NULL
    FROM unnest(ids, claim_tokens, embeddings) AS c(id, claim_token, embedding)
    WHERE q.id = c.id
      AND study_embed._claim_is_current(q.embedding_shadow_status,
                                        q.embedding_shadow_claim_token, c.claim_token)
      AND c.embedding IS NOT NULL
    RETURNING q.id;
    PERFORM study_embed._set_actor(NULL);
END;
$$;
COMMENT ON FUNCTION study_embed.complete_shadow(bigint[], uuid[], :"vector_schema".vector[], text) IS
    'Write the shadow generation''s embeddings of claimed rows; rows whose claim was voided are '
    'skipped.  Returns the ids written.';

-- As fail(), for the shadow slot.
CREATE OR REPLACE FUNCTION study_embed.fail_shadow(ids bigint[], claim_tokens uuid[],
                                                   errors text[], retryable boolean DEFAULT true)
RETURNS SETOF bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg study_embed.settings := (SELECT s FROM study_embed.settings s);
BEGIN
    PERFORM study_embed._shadow('fail_shadow');
    PERFORM study_embed._check_batch('fail_shadow', '{ids,claim_tokens,errors}',
        ARRAY[cardinality(ids), cardinality(claim_tokens), cardinality(errors)]);
    PERFORM study_embed._set_actor('fail');
    RETURN QUERY
    UPDATE public.study_questions q
    SET embedding_shadow_status = 'failed',
        embedding_shadow_claim_token = NULL,
        embedding_shadow_attempts = q.embedding_shadow_attempts + 1,
        embedding_shadow_due_at = CASE
            WHEN NOT coalesce(retryable, true) OR q.embedding_shadow_attempts + 1 >= cfg.max_attempts
            THEN NULL
            ELSE now() + least(cfg.retry_max, cfg.retry_base
                               * power(2, least(q.embedding_shadow_attempts, 30))::double precision)
        END,
        embedding_shadow_queued_at = CASE
            WHEN NOT coalesce(retryable, true) OR q.embedding_shadow_attempts + 1 >= cfg.max_attempts
            THEN NULL ELSE q.embedding_shadow_queued_at END,
        embedding_shadow_last_error = left(coalesce(nullif(c.error, ''), 'unknown error'), 2000)
    FROM unnest(ids, claim_tokens, errors) AS c(id, claim_token, error)
    WHERE q.id = c.id
      AND study_embed._claim_is_current(q.embedding_shadow_status,
                                        q.embedding_shadow_claim_token, c.claim_token)
    RETURNING q.id;
    PERFORM study_embed._set_actor(NULL);
END;
$$;
COMMENT ON FUNCTION study_embed.fail_shadow(bigint[], uuid[], text[], boolean) IS
    'Mark claimed rows of the shadow generation failed, with backoff when retryable.';

-- As release(), for the shadow slot.
CREATE OR REPLACE FUNCTION study_embed.release_shadow(ids bigint[], claim_tokens uuid[],
                                                      retry_in interval DEFAULT '0 seconds',
                                                      reason text DEFAULT NULL)
RETURNS SETOF bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
BEGIN
    PERFORM study_embed._shadow('release_shadow');
    PERFORM study_embed._check_batch('release_shadow', '{ids,claim_tokens}',
        ARRAY[cardinality(ids), cardinality(claim_tokens)]);
    PERFORM study_embed._set_actor('release');
    RETURN QUERY
    UPDATE public.study_questions q
    SET embedding_shadow_status = CASE
            WHEN q.embedding_shadow_attempts > 0 THEN 'failed'
            WHEN q.embedding_shadow IS NULL THEN 'none'
            ELSE 'stale' END,
        embedding_shadow_claim_token = NULL,
        embedding_shadow_due_at = now() + greatest(coalesce(retry_in, interval '0'), interval '0'),
        embedding_shadow_last_error = CASE WHEN q.embedding_shadow_attempts > 0
            THEN coalesce(left(reason, 2000), q.embedding_shadow_last_error)
            ELSE q.embedding_shadow_last_error END
    FROM unnest(ids, claim_tokens) AS c(id, claim_token)
    WHERE q.id = c.id
      AND study_embed._claim_is_current(q.embedding_shadow_status,
                                        q.embedding_shadow_claim_token, c.claim_token)
    RETURNING q.id;
    PERFORM study_embed._set_actor(NULL);
END;
$$;
COMMENT ON FUNCTION study_embed.release_shadow(bigint[], uuid[], interval, text) IS
    'Return claimed rows of the shadow generation to its queue without counting an attempt.';

-- ------------------------------------------------------------------------------------------
-- Begin, switch, drop: DDL on study_questions, so run by its owner (`study-embed model ...`,
-- which re-applies db/idempotent in the same transaction).  Nobody else may call them.
-- ------------------------------------------------------------------------------------------

-- The slot's columns, in the order both slots list them.
CREATE OR REPLACE FUNCTION study_embed._slot_columns()
RETURNS text[]
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
RETURN ARRAY['', '_status', '_model', '_updated_at', '_source_sha256', '_claim_token',
             '_due_at', '_queued_at', '_attempts', '_last_error'];

-- Objects outside study-embed that read a slot's columns by their position (views, rules,
-- SQL-standard function bodies, triggers): a switch would hand them the other generation, and
-- a drop cannot go through them.  Indexes are not listed: they follow the vectors they index.
CREATE OR REPLACE FUNCTION study_embed._slot_dependents()
RETURNS TABLE (what text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT DISTINCT CASE WHEN d.classid = 'pg_rewrite'::regclass   -- a view: say the view
                         THEN (SELECT pg_describe_object('pg_class'::regclass, r.ev_class, 0)
                               FROM pg_rewrite r WHERE r.oid = d.objid)
                         ELSE pg_describe_object(d.classid, d.objid, 0) END
    FROM pg_depend d
    JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
    WHERE d.refclassid = 'pg_class'::regclass
      AND d.refobjid = 'public.study_questions'::regclass
      AND a.attname IN (SELECT 'embedding' || s FROM unnest(study_embed._slot_columns()) s
                        UNION ALL
                        SELECT 'embedding_shadow' || s FROM unnest(study_embed._slot_columns()) s)
      AND d.classid IN ('pg_rewrite'::regclass, 'pg_proc'::regclass, 'pg_trigger'::regclass)
      AND NOT (d.classid = 'pg_proc'::regclass AND EXISTS (
                   SELECT 1 FROM pg_proc p WHERE p.oid = d.objid
                     AND p.pronamespace = 'study_embed'::regnamespace))
      AND NOT (d.classid = 'pg_trigger'::regclass AND EXISTS (
                   SELECT 1 FROM pg_trigger t WHERE t.oid = d.objid
                     AND t.tgname LIKE 'study\_embed\_%'))
      AND NOT (d.classid = 'pg_rewrite'::regclass AND EXISTS (
                   SELECT 1 FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class
                   WHERE r.oid = d.objid AND c.relnamespace = 'study_embed'::regnamespace))
    ORDER BY 1;
END;

CREATE OR REPLACE FUNCTION study_embed._refuse_dependents(step text)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found text := (SELECT string_agg(d.what, ', ') FROM study_embed._slot_dependents() d);
BEGIN
    IF found IS NOT NULL THEN
        RAISE EXCEPTION 'cannot % the generations: % (reading study_questions'' embedding '
                        'columns by position) would then read the other model''s vectors',
                        step, found
            USING ERRCODE = 'dependent_objects_still_exist',
                  HINT = 'Drop them, or give them SQL that names the columns when it runs '
                         '(PL/pgSQL), and try again.';
    END IF;
END;
$$;

-- Begin a model change: the shadow slot for `model`, of `dimension`.
CREATE OR REPLACE FUNCTION study_embed.begin_generation(model text, dimension integer)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    vschema name := (SELECT n.nspname FROM pg_extension e
                     JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector');
    served study_embed.generations := (SELECT g FROM study_embed.generations g
                                       WHERE g.slot = 'served');
BEGIN
    IF model IS NULL OR model = '' OR length(model) > 120 THEN
        RAISE EXCEPTION 'begin: the model must be a name of 1 to 120 characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF dimension IS NULL OR dimension < 1 OR dimension > 2000 THEN
        RAISE EXCEPTION 'begin: the dimension must be between 1 and 2000 (pgvector''s HNSW '
                        'index), not %', dimension
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF study_embed._has_shadow() OR EXISTS (SELECT 1 FROM study_embed.generations g
                                            WHERE g.slot = 'shadow') THEN
        RAISE EXCEPTION 'begin: a model change is in progress (%): switch to it, or drop it, '
                        'first', (SELECT g.model FROM study_embed.generations g
                                  WHERE g.slot = 'shadow')
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF model = served.model THEN
        RAISE EXCEPTION 'begin: % is the served model already', model
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'To embed every row again with it, use study-embed reembed.';
    END IF;
    -- constant defaults: catalog only, no row is rewritten; every row is queued as of now
    EXECUTE format(
        'ALTER TABLE public.study_questions'
        ' ADD COLUMN embedding_shadow %I.vector(%s),'
        ' ADD COLUMN embedding_shadow_status varchar(20) NOT NULL DEFAULT ''none'','
        ' ADD COLUMN embedding_shadow_model varchar(120),'
        ' ADD COLUMN embedding_shadow_updated_at timestamptz,'
        ' ADD COLUMN embedding_shadow_source_sha256 bytea,'
        ' ADD COLUMN embedding_shadow_claim_token uuid,'
        ' ADD COLUMN embedding_shadow_due_at timestamptz DEFAULT now(),'
        ' ADD COLUMN embedding_shadow_queued_at timestamptz DEFAULT now(),'
        ' ADD COLUMN embedding_shadow_attempts smallint NOT NULL DEFAULT 0,'
        ' ADD COLUMN embedding_shadow_last_error text,'
        ' ADD CONSTRAINT study_questions_embedding_shadow_status_check CHECK ('
        '   embedding_shadow_status IN (''none'', ''pending'', ''ready'', ''failed'', ''stale'')),'
        ' ADD CONSTRAINT study_questions_embedding_shadow_ready_check CHECK ('
        '   embedding_shadow_status <> ''ready'' OR (embedding_shadow IS NOT NULL'
        '   AND embedding_shadow_model IS NOT NULL AND embedding_shadow_claim_token IS NULL)),'
        ' ADD CONSTRAINT study_questions_embedding_shadow_pending_check CHECK ('
        '   embedding_shadow_status <> ''pending'' OR (embedding_shadow_claim_token IS NOT NULL'
        '   AND embedding_shadow_due_at IS NOT NULL)),'
        ' ADD CONSTRAINT study_questions_embedding_shadow_queued_check CHECK ('
        '   CASE embedding_shadow_status WHEN ''ready'' THEN embedding_shadow_queued_at IS NULL'
        '   WHEN ''failed'' THEN true ELSE embedding_shadow_queued_at IS NOT NULL END)',
        vschema, dimension);
    -- out of line, as the served vector (0005_write_path.sql): the row keeps room for HOT
    -- updates, before and after a switch
    ALTER TABLE public.study_questions ALTER COLUMN embedding_shadow SET STORAGE EXTERNAL;
    CREATE INDEX study_questions_embedding_shadow_queue ON public.study_questions
        (embedding_shadow_queued_at, id)
        WHERE deleted_at IS NULL AND embedding_shadow_queued_at IS NOT NULL;
    -- No HNSW index yet: while the generation is built, every vector written would cost an
    -- insert into its graph, and (the update not being HOT) a second, redundant one into the
    -- served graph; `make bench` measured 2.4 times the database time per row.  `study-embed
    -- model switch` builds it in one pass (CREATE INDEX CONCURRENTLY), before it switches.
    INSERT INTO study_embed.generations (slot, model, dimension)
    VALUES ('shadow', begin_generation.model, begin_generation.dimension);
END;
$$;
COMMENT ON FUNCTION study_embed.begin_generation(text, integer) IS
    'Begin a model change: the shadow slot for the next model (run by `study-embed model begin`, '
    'as the owner of study_questions).';

-- The switch's refusal while `missing` live rows are not embedded by `model`, unless forced:
-- raised by switch_generation() under its lock, and by `study-embed model switch` before it
-- builds the index (Migrator._before_switch), with the same words.
CREATE OR REPLACE FUNCTION study_embed._refuse_switch(model text, missing bigint, force boolean)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF missing > 0 AND NOT coalesce(force, false) THEN
        RAISE EXCEPTION 'switch: % live questions are not embedded by % yet', missing, model
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Wait for the listeners (study-embed status shows the progress), or '
                         'force the switch: those questions are then missing from search until '
                         'they are embedded.';
    END IF;
END;
$$;

-- Switch the served generation with the shadow one.  Refused while live rows are not ready in
-- the shadow slot (with how many), unless forced; a forced switch serves what there is (rows
-- not yet embedded by the new model are missing from search until they are).
CREATE OR REPLACE FUNCTION study_embed.switch_generation(force boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    g study_embed.generations := study_embed._shadow('switch');
    served study_embed.generations := (SELECT x FROM study_embed.generations x
                                       WHERE x.slot = 'served');
    missing bigint;
    s text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_index i
                   WHERE i.indexrelid = to_regclass('public.study_questions_embedding_shadow_hnsw')
                     AND i.indisvalid) THEN
        RAISE EXCEPTION 'switch: the % generation has no HNSW index yet', g.model
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'study-embed model switch builds it (CREATE INDEX CONCURRENTLY: no '
                         'statement waits) before it switches.';
    END IF;
    -- no write between the count and the renames: the count is the truth the switch acts on
    LOCK TABLE public.study_questions IN ACCESS EXCLUSIVE MODE;
    PERFORM study_embed._refuse_dependents('switch');
    -- one scan: the status counts of the generation about to be served (030_counts.sql; no
    -- delta can be in flight under this lock), and from them the rows it is missing.  A refusal
    -- below rolls them back.
    DELETE FROM study_embed.status_counts;
    INSERT INTO study_embed.status_counts (status, deleted, n)
    SELECT q.embedding_shadow_status, q.deleted_at IS NOT NULL, count(*)
    FROM public.study_questions q GROUP BY 1, 2;
    SELECT coalesce(sum(c.n), 0)::bigint INTO missing FROM study_embed.status_counts c
    WHERE NOT c.deleted AND c.status <> 'ready';
    PERFORM study_embed._refuse_switch(g.model, missing, force);
    FOREACH s IN ARRAY study_embed._slot_columns() LOOP
        EXECUTE format('ALTER TABLE public.study_questions RENAME COLUMN %I TO %I',
                       'embedding' || s, 'embedding_switching' || s);
        EXECUTE format('ALTER TABLE public.study_questions RENAME COLUMN %I TO %I',
                       'embedding_shadow' || s, 'embedding' || s);
        EXECUTE format('ALTER TABLE public.study_questions RENAME COLUMN %I TO %I',
                       'embedding_switching' || s, 'embedding_shadow' || s);
    END LOOP;
    FOREACH s IN ARRAY ARRAY['status_check', 'ready_check', 'pending_check', 'queued_check'] LOOP
        EXECUTE format('ALTER TABLE public.study_questions RENAME CONSTRAINT %I TO %I',
                       'study_questions_embedding_' || s, 'study_questions_embedding_switching_' || s);
        EXECUTE format('ALTER TABLE public.study_questions RENAME CONSTRAINT %I TO %I',
                       'study_questions_embedding_shadow_' || s, 'study_questions_embedding_' || s);
        EXECUTE format('ALTER TABLE public.study_questions RENAME CONSTRAINT %I TO %I',
                       'study_questions_embedding_switching_' || s, 'study_questions_embedding_shadow_' || s);
    END LOOP;
    -- study-embed's own indexes trade names too (an app's own index on embedding keeps its
    -- name, and now indexes the shadow slot)
    FOREACH s IN ARRAY ARRAY['hnsw', 'queue'] LOOP
        IF to_regclass('public.study_questions_embedding_' || s) IS NOT NULL THEN
            EXECUTE format('ALTER INDEX public.%I RENAME TO %I',
                           'study_questions_embedding_' || s, 'study_questions_embedding_switching_' || s);
        END IF;
        IF to_regclass('public.study_questions_embedding_shadow_' || s) IS NOT NULL THEN
            EXECUTE format('ALTER INDEX public.%I RENAME TO %I',
                           'study_questions_embedding_shadow_' || s, 'study_questions_embedding_' || s);
        END IF;
        IF to_regclass('public.study_questions_embedding_switching_' || s) IS NOT NULL THEN
            EXECUTE format('ALTER INDEX public.%I RENAME TO %I',
                           'study_questions_embedding_switching_' || s, 'study_questions_embedding_shadow_' || s);
        END IF;
    END LOOP;
    DELETE FROM study_embed.generations;
    INSERT INTO study_embed.generations (slot, model, dimension, was_served)
    VALUES ('served', g.model, g.dimension, true),
           ('shadow', served.model, served.dimension, true);
    RETURN missing;
END;
$$;
COMMENT ON FUNCTION study_embed.switch_generation(boolean) IS
    'Serve the shadow generation and keep the served one in the shadow slot (run by '
    '`study-embed model switch`, as the owner of study_questions); returns the live rows the '
    'new generation is missing (0 unless forced).';

-- Drop the shadow generation: its columns, and with them its indexes and constraints.
CREATE OR REPLACE FUNCTION study_embed.drop_generation()
RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    g study_embed.generations := study_embed._shadow('drop');
    s text;
BEGIN
    LOCK TABLE public.study_questions IN ACCESS EXCLUSIVE MODE;
    PERFORM study_embed._refuse_dependents('drop');
    DROP TRIGGER IF EXISTS study_embed_guard_shadow_insert ON public.study_questions;
    DROP TRIGGER IF EXISTS study_embed_guard_shadow ON public.study_questions;
    FOREACH s IN ARRAY study_embed._slot_columns() LOOP
        EXECUTE format('ALTER TABLE public.study_questions DROP COLUMN %I', 'embedding_shadow' || s);
    END LOOP;
    DELETE FROM study_embed.generations x WHERE x.slot = 'shadow';
    RETURN g.model;
END;
$$;
COMMENT ON FUNCTION study_embed.drop_generation() IS
    'Drop the shadow generation (run by `study-embed model drop`, as the owner of '
    'study_questions); returns its model.';
