-- 010_state_machine.sql — re-runnable: applied by `make migrate` whenever it changed.
--
-- The embedding status of a question, written once.  Every status change of
-- public.study_questions, whoever makes it, passes through study_embed._guard_update(); the
-- allowed transitions are the one CASE in study_embed.transition_allowed().
--
--   status    meaning                                              claimable when
--   none      inserted, never embedded                             at once
--   stale     its text changed (or a re-embed was asked for);      at once
--             the previous embedding is kept and still served
--   pending   claimed by a listener; lease until embedding_due_at  the lease expired
--   ready     embedding computed from the current text             never
--   failed    the last attempt failed; previous embedding kept     at embedding_due_at (backoff),
--                                                                  never after max_attempts
--
-- Who may change it:
--   client   (any SQL session)  content edit -> stale; `SET embedding_status = 'stale'`
--                               (ask for a re-embed); nothing else, and never the embedding
--                               bookkeeping columns
--   claim                       none|stale|failed|pending(expired) -> pending,
--                               pending(expired, attempts used up) -> failed
--   complete                    pending -> ready
--   fail                        pending -> failed
--   release                     pending -> none|stale|failed (transient error: not counted)
--   requeue                     ready|failed -> stale (model change, explicit retry)
--   adopt                       a row from before study-embed (no bookkeeping): queued with
--                               its status, or ready|none -> stale|none (045_adoption.sql)
--
-- Who is the pipeline: an update is the pipeline's only when it runs as study_embed_pipeline,
-- i.e. inside one of the SECURITY DEFINER queue functions that role owns (000_roles.sql).
-- Which of its operations it is (claim, complete, ...) is then read from the transaction-local
-- setting study_embed.actor that the function set just before its UPDATE.  Any other session
-- is a client, whatever it sets.
--
-- Every client write the pipeline reserves to itself raises SQLSTATE 42501
-- (insufficient_privilege); a value no row may ever hold (an unknown status) is also refused
-- by the CHECK constraints of 0001_schema.sql (23514), which a trigger cannot bypass.
--
-- No name resolves in a schema that another role may create objects in: every function
-- either pins search_path to pg_catalog, pg_temp, or is a small expression with a SQL-standard
-- body (`RETURN ...`), whose names were bound when migrate created it (under that same path)
-- and which a SET clause would only keep the planner from inlining: each call would then start
-- an executor of its own, once per row of a claim or a complete (BENCHMARKS.md, "CPU per
-- embedded row").  pgvector's type and operators are schema-qualified.
--
-- psql variables: :"vector_schema" (the schema pgvector is installed in).

-- The one place that says what text is embedded.  Subject and scope are left out on purpose:
-- category names are noise for semantic search.
--
-- Changing this text changes what every stored embedding should be.  Ship such a change with
-- a migration that calls study_embed.requeue_changed_text(): the rows are queued again and keep
-- serving their old vectors until the new ones land.  (Nothing else breaks meanwhile: the hash
-- is checked only on the way into `ready`.)
CREATE OR REPLACE FUNCTION study_embed.render_question(
    question_text text, choice_1 text, choice_2 text, choice_3 text, choice_4 text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN '문제: ' || question_text || E'\n보기:\n1. ' || choice_1 || E'\n2. ' || choice_2
       || E'\n3. ' || choice_3 || E'\n4. ' || choice_4;
COMMENT ON FUNCTION study_embed.render_question(text, text, text, text, text) IS
    'The exact text embedded for a question: 문제/보기 and the four numbered choices.';

-- STABLE as convert_to() is: declared IMMUTABLE, it could not be inlined.
CREATE OR REPLACE FUNCTION study_embed.text_sha256(body text)
RETURNS bytea
LANGUAGE sql STABLE STRICT PARALLEL SAFE
RETURN sha256(convert_to(body, 'UTF8'));
COMMENT ON FUNCTION study_embed.text_sha256(text) IS
    'sha256 of a rendered text: what embedding_source_sha256 records.';

-- The model whose vectors the `embedding` column serves (study_embed.generations; a model change
-- is 046_generations.sql): complete() takes no other, search compares no other.  SECURITY
-- DEFINER: the app's and the listener's roles may not read the table.
-- (plpgsql: its query is planned once per session, not at every call.)
CREATE OR REPLACE FUNCTION study_embed.served_model()
RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (SELECT g.model FROM study_embed.generations g WHERE g.slot = 'served');
END;
$$;
COMMENT ON FUNCTION study_embed.served_model() IS
    'The model whose vectors search serves (and with which a query must be embedded).';

CREATE OR REPLACE FUNCTION study_embed.transition_allowed(op text, old_status text, new_status text)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE op
    WHEN 'client'   THEN new_status = old_status OR new_status = 'stale'
    WHEN 'claim'    THEN old_status IN ('none', 'stale', 'failed', 'pending')
                         AND new_status = 'pending'
                         OR (old_status = 'pending' AND new_status = 'failed')
    WHEN 'complete' THEN old_status = 'pending' AND new_status = 'ready'
    WHEN 'fail'     THEN old_status = 'pending' AND new_status = 'failed'
    WHEN 'release'  THEN old_status = 'pending' AND new_status IN ('none', 'stale', 'failed')
    WHEN 'requeue'  THEN old_status IN ('ready', 'failed') AND new_status = 'stale'
    WHEN 'adopt'    THEN new_status = old_status OR new_status IN ('none', 'stale')
    ELSE false
END;
COMMENT ON FUNCTION study_embed.transition_allowed(text, text, text) IS
    'The embedding state machine: which actor may move a row from one status to another.';

-- The role whose updates are the pipeline's.
CREATE OR REPLACE FUNCTION study_embed.pipeline_role()
RETURNS name
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN 'study_embed_pipeline'::name;
COMMENT ON FUNCTION study_embed.pipeline_role() IS
    'The role that owns the queue functions; only its updates may make pipeline transitions.';

-- Which operation the current update is: the pipeline's own (claim, complete, ...) only when
-- it runs as the pipeline role; `client` for everybody else, whatever they set.
CREATE OR REPLACE FUNCTION study_embed._actor()
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
RETURN CASE WHEN current_user = study_embed.pipeline_role()
            THEN coalesce(nullif(current_setting('study_embed.actor', true), ''), 'client')
            ELSE 'client' END;

-- Set by the queue functions around their UPDATE (transaction-local).  Only the pipeline role
-- may call it, and only the pipeline role's updates read it.  plpgsql, as every helper the queue
-- functions call once per batch: a SQL function that is not inlined is parsed and planned again
-- at every call, a plpgsql one plans once per session (the eleven such calls of a claim and a
-- complete held 11 % of the backend's CPU at batches of 100, most of it parsing and planning;
-- BENCHMARKS.md).
CREATE OR REPLACE FUNCTION study_embed._set_actor(actor text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM set_config('study_embed.actor', coalesce(actor, ''), true);
END;
$$;

-- pgvector's inequality, NULL-aware, with the operator named by its schema.
CREATE OR REPLACE FUNCTION study_embed._vectors_differ(a :"vector_schema".vector,
                                                       b :"vector_schema".vector)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN a IS NULL OR b IS NULL THEN (a IS NULL) <> (b IS NULL)
            ELSE a OPERATOR(:"vector_schema".<>) b END;

-- A ready row adopted from a bank embedded before study-embed has its source hash in
-- study_embed.adopted_source (045_adoption.sql), not in the row.  SECURITY DEFINER (owned by
-- study_embed_pipeline): the check below runs as the writing client, which may not read it.
CREATE OR REPLACE FUNCTION study_embed._adopted(question_id bigint)
RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
RETURN EXISTS (SELECT 1 FROM study_embed.adopted_source a WHERE a.question_id = _adopted.question_id);

-- Every status must come with the bookkeeping that makes it true: what is wrong with a row's
-- status and bookkeeping, or NULL.  An assertion about the pipeline's own writes (a client
-- cannot reach these states: the guards refuse first).  The guards pass the columns, not the
-- row: a SQL-standard body is inlined into the guard's own expression.  As a plpgsql function
-- of the row (a second call with a search_path of its own, and the row built as a composite
-- value: the new vector copied, an old one read back from TOAST) it was 9 % of the backend's CPU
-- in claims and completes of 100 rows: the guard's share fell from 21 % to 12 % (BENCHMARKS.md).
DROP FUNCTION IF EXISTS study_embed._check_consistent(public.study_questions, boolean);
CREATE OR REPLACE FUNCTION study_embed._inconsistency(
    question_id bigint, status text, has_embedding boolean, model text, source_sha256 bytea,
    claim_token uuid, due_at timestamptz, queued_at timestamptz, last_error text)
RETURNS text
LANGUAGE sql STABLE
RETURN CASE status
    WHEN 'ready' THEN CASE
        WHEN NOT has_embedding THEN 'it has no embedding'
        WHEN model IS NULL THEN 'it has no embedding_model'
        WHEN source_sha256 IS NULL AND NOT study_embed._adopted(question_id)
            THEN 'it has no embedding_source_sha256 (and was not adopted)'
        WHEN claim_token IS NOT NULL OR due_at IS NOT NULL OR queued_at IS NOT NULL
            THEN 'it is still queued' END
    WHEN 'pending' THEN CASE
        WHEN claim_token IS NULL OR due_at IS NULL
            THEN 'nobody claimed it (pending is set by study_embed.claim only)' END
    WHEN 'none' THEN CASE
        WHEN claim_token IS NOT NULL THEN 'it carries a claim token'
        WHEN due_at IS NULL OR queued_at IS NULL THEN 'it is not queued' END
    WHEN 'stale' THEN CASE
        WHEN claim_token IS NOT NULL THEN 'it carries a claim token'
        WHEN due_at IS NULL OR queued_at IS NULL THEN 'it is not queued' END
    WHEN 'failed' THEN CASE
        WHEN claim_token IS NOT NULL THEN 'it carries a claim token'
        WHEN last_error IS NULL THEN 'it has no error recorded' END
    ELSE format('%L is not an embedding status (none, pending, ready, failed, stale)', status)
END;

-- BEFORE INSERT: a new question starts as `none` and is queued for the backfill.  The only
-- other way in is `ready` with its embedding, model and the hash of its text, and only for the
-- table's owner (a restored dump, a copy made by the migrator): a client that could insert a
-- row as `ready` could pair any vector with any text.
CREATE OR REPLACE FUNCTION study_embed._guard_insert()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    problem text;
BEGIN
    NEW.embedding_claim_token := NULL;
    IF NEW.embedding_status = 'ready' THEN
        IF NOT pg_has_role(current_user,
                           (SELECT c.relowner FROM pg_class c WHERE c.oid = TG_RELID), 'USAGE') THEN
            RAISE EXCEPTION 'only the owner of study_questions may insert a row that is already '
                            'embedded (embedding_status ''ready'')'
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'Insert the question without its embedding: it is queued and embedded.';
        END IF;
        IF NEW.embedding IS NULL OR NEW.embedding_model IS NULL
           OR NEW.embedding_source_sha256 IS DISTINCT FROM study_embed.text_sha256(
                  study_embed.render_question(NEW.question_text, NEW.choice_1, NEW.choice_2,
                                              NEW.choice_3, NEW.choice_4)) THEN
            RAISE EXCEPTION 'a question inserted as ready needs its embedding, embedding_model '
                            'and the embedding_source_sha256 of its current text'
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'Insert it without the embedding to have it embedded.';
        END IF;
        NEW.embedding_due_at := NULL;
        NEW.embedding_queued_at := NULL;
        NEW.embedding_attempts := 0;
        NEW.embedding_last_error := NULL;
    ELSIF NEW.embedding_status = 'none' THEN
        IF NEW.embedding IS NOT NULL THEN
            RAISE EXCEPTION 'a new question with an embedding must say embedding_status = ''ready'''
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'Insert it without the embedding to have it embedded.';
        END IF;
        NEW.embedding_due_at := now();
        NEW.embedding_queued_at := now();
        NEW.embedding_attempts := 0;
        NEW.embedding_last_error := NULL;
        NEW.embedding_source_sha256 := NULL;
        NEW.embedding_model := NULL;
        NEW.embedding_updated_at := NULL;
    ELSE
        RAISE EXCEPTION 'a new question cannot start as embedding_status %', quote_nullable(NEW.embedding_status)
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Leave embedding_status at its default (none): the row is queued and embedded.';
    END IF;
    problem := study_embed._inconsistency(
        NEW.id, NEW.embedding_status, NEW.embedding IS NOT NULL, NEW.embedding_model,
        NEW.embedding_source_sha256, NEW.embedding_claim_token, NEW.embedding_due_at,
        NEW.embedding_queued_at, NEW.embedding_last_error);
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION 'study_questions %: embedding_status % is inconsistent: %',
            NEW.id, NEW.embedding_status, problem
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END;
$$;

-- BEFORE UPDATE: the state machine.  The trigger fires only for updates that name a text or
-- pipeline column and really change one (its WHEN clause), so an app's update of any other
-- column never runs it.
CREATE OR REPLACE FUNCTION study_embed._guard_update()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    actor text := study_embed._actor();
    -- cheap column comparison first; render only when a column really changed
    text_changed boolean :=
        (NEW.question_text, NEW.choice_1, NEW.choice_2, NEW.choice_3, NEW.choice_4)
        IS DISTINCT FROM (OLD.question_text, OLD.choice_1, OLD.choice_2, OLD.choice_3, OLD.choice_4)
        AND study_embed.render_question(OLD.question_text, OLD.choice_1, OLD.choice_2,
                                        OLD.choice_3, OLD.choice_4)
            IS DISTINCT FROM
            study_embed.render_question(NEW.question_text, NEW.choice_1, NEW.choice_2,
                                        NEW.choice_3, NEW.choice_4);
    touched text[];
    problem text;
BEGIN
    IF actor = 'client' THEN
        touched := array_remove(ARRAY[
            CASE WHEN study_embed._vectors_differ(NEW.embedding, OLD.embedding) THEN 'embedding' END,
            CASE WHEN NEW.embedding_model IS DISTINCT FROM OLD.embedding_model THEN 'embedding_model' END,
            CASE WHEN NEW.embedding_updated_at IS DISTINCT FROM OLD.embedding_updated_at THEN 'embedding_updated_at' END,
            CASE WHEN NEW.embedding_source_sha256 IS DISTINCT FROM OLD.embedding_source_sha256 THEN 'embedding_source_sha256' END,
            CASE WHEN NEW.embedding_claim_token IS DISTINCT FROM OLD.embedding_claim_token THEN 'embedding_claim_token' END,
            CASE WHEN NEW.embedding_due_at IS DISTINCT FROM OLD.embedding_due_at THEN 'embedding_due_at' END,
            CASE WHEN NEW.embedding_queued_at IS DISTINCT FROM OLD.embedding_queued_at THEN 'embedding_queued_at' END,
            CASE WHEN NEW.embedding_attempts IS DISTINCT FROM OLD.embedding_attempts THEN 'embedding_attempts' END,
            CASE WHEN NEW.embedding_last_error IS DISTINCT FROM OLD.embedding_last_error THEN 'embedding_last_error' END
        ], NULL);
        IF cardinality(touched) > 0 THEN
            RAISE EXCEPTION 'study_questions %: % managed by the embedding pipeline', OLD.id,
                array_to_string(touched, ', ') || CASE WHEN cardinality(touched) > 1 THEN ' are' ELSE ' is' END
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'Edit the question; to ask for a new embedding set embedding_status = ''stale''.';
        END IF;
    ELSIF text_changed THEN
        RAISE EXCEPTION 'study_embed.% must not change question text', actor;
    END IF;

    IF NOT study_embed.transition_allowed(actor, OLD.embedding_status, NEW.embedding_status) THEN
        RAISE EXCEPTION 'study_questions %: embedding_status cannot go from % to % (%)', OLD.id,
            OLD.embedding_status, quote_nullable(NEW.embedding_status),
            CASE actor WHEN 'client' THEN 'a SQL client may only set ''stale'', to ask for a re-embed'
                       ELSE 'by study_embed.' || actor END
            USING ERRCODE = CASE actor WHEN 'client' THEN 'insufficient_privilege'
                                       ELSE 'check_violation' END;
    END IF;

    -- New text, or an explicit request: queue the row again.  The previous embedding stays
    -- (it keeps serving search) until the new one replaces it; an in-flight claim is voided.
    -- A row already waiting keeps its place in the queue (embedding_queued_at, the queue
    -- index's key, is left as it is, so the edit can be HOT); a ready or parked failed row
    -- joins it.
    IF text_changed OR (actor = 'client' AND NEW.embedding_status = 'stale'
                        AND OLD.embedding_status <> 'stale') THEN
        NEW.embedding_status := 'stale';
        NEW.embedding_claim_token := NULL;
        NEW.embedding_due_at := now();
        NEW.embedding_queued_at := CASE
            WHEN OLD.embedding_queued_at IS NULL THEN now() ELSE OLD.embedding_queued_at END;
        NEW.embedding_attempts := 0;
        NEW.embedding_last_error := NULL;
    END IF;

    -- The text hash is computed by complete() from this very row and checked on the way in by
    -- _guard_insert: it is not re-verified here, so a change of render_question() never breaks
    -- an app's update of a ready row.
    problem := study_embed._inconsistency(
        NEW.id, NEW.embedding_status, NEW.embedding IS NOT NULL, NEW.embedding_model,
        NEW.embedding_source_sha256, NEW.embedding_claim_token, NEW.embedding_due_at,
        NEW.embedding_queued_at, NEW.embedding_last_error);
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION 'study_questions %: embedding_status % is inconsistent: %',
            NEW.id, NEW.embedding_status, problem
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END;
$$;
-- (the form of the row, which the guards called before _inconsistency)
DROP FUNCTION IF EXISTS study_embed._check_consistent(public.study_questions);

-- Fires only when an INSERT gives a pipeline column a value other than its default: a plain
-- INSERT gets its queue bookkeeping from the column defaults (0005) and runs no function.
-- (now() is the transaction's start, as the defaults are.)
CREATE OR REPLACE TRIGGER study_embed_guard_insert
    BEFORE INSERT ON public.study_questions
    FOR EACH ROW
    WHEN (NEW.embedding_status IS DISTINCT FROM 'none' OR NEW.embedding IS NOT NULL
          OR NEW.embedding_model IS NOT NULL OR NEW.embedding_updated_at IS NOT NULL
          OR NEW.embedding_source_sha256 IS NOT NULL OR NEW.embedding_claim_token IS NOT NULL
          OR NEW.embedding_due_at IS DISTINCT FROM now()
          OR NEW.embedding_queued_at IS DISTINCT FROM now()
          OR NEW.embedding_attempts IS DISTINCT FROM 0 OR NEW.embedding_last_error IS NOT NULL)
    EXECUTE FUNCTION study_embed._guard_insert();

-- Names every column the state machine reads; fires only when one of them really changes.
-- (The WHEN clause is bound when the trigger is created: pgvector's operator is qualified.)
CREATE OR REPLACE TRIGGER study_embed_guard_update
    BEFORE UPDATE OF question_text, choice_1, choice_2, choice_3, choice_4,
        embedding, embedding_status, embedding_model, embedding_updated_at,
        embedding_source_sha256, embedding_claim_token, embedding_due_at, embedding_queued_at,
        embedding_attempts, embedding_last_error
    ON public.study_questions
    FOR EACH ROW
    WHEN ((OLD.question_text, OLD.choice_1, OLD.choice_2, OLD.choice_3, OLD.choice_4,
           OLD.embedding_status, OLD.embedding_model, OLD.embedding_updated_at,
           OLD.embedding_source_sha256, OLD.embedding_claim_token, OLD.embedding_due_at,
           OLD.embedding_queued_at, OLD.embedding_attempts, OLD.embedding_last_error)
          IS DISTINCT FROM
          (NEW.question_text, NEW.choice_1, NEW.choice_2, NEW.choice_3, NEW.choice_4,
           NEW.embedding_status, NEW.embedding_model, NEW.embedding_updated_at,
           NEW.embedding_source_sha256, NEW.embedding_claim_token, NEW.embedding_due_at,
           NEW.embedding_queued_at, NEW.embedding_attempts, NEW.embedding_last_error)
          OR (OLD.embedding IS NULL) <> (NEW.embedding IS NULL)
          OR OLD.embedding OPERATOR(:"vector_schema".<>) NEW.embedding)
    EXECUTE FUNCTION study_embed._guard_update();

-- A row from before study-embed (an adopted bank: the columns were added under it, so it has
-- no queue bookkeeping at all) is queued by its first write, whoever makes it: the app's,
-- before the adoption reaches it (045_adoption.sql), or the adoption's own.
--   none, stale  waiting from now
--   pending      a claim of the old worker: an expired lease (the next claim counts it as a
--                failed attempt, as for any listener that did not finish)
--   failed       due for a retry now, with a fresh attempt budget
--   ready without its vector or model, or a status study-embed does not know: stale (none
--                without a vector)
-- (A complete `ready` row needs nothing to stay consistent; the adoption decides whether to
-- keep it.)  The status count of a row whose status changes here is recorded by
-- study_embed_count_update (030_counts.sql), which fires on any update that changes a status.
CREATE OR REPLACE FUNCTION study_embed._queued_from_before(q public.study_questions,
                                                           status text)
RETURNS public.study_questions
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    q.embedding_status := status;
    q.embedding_claim_token := CASE WHEN status = 'pending' THEN gen_random_uuid() END;
    q.embedding_due_at := now();
    q.embedding_queued_at := now();
    q.embedding_attempts := 0;
    q.embedding_last_error := CASE WHEN status = 'failed'
        THEN 'failed under the worker before study-embed; retried after adoption' END;
    RETURN q;
END;
$$;

CREATE OR REPLACE FUNCTION study_embed._queue_unadopted()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- an edit of the text has queued it already (study_embed_guard_update fires first)
    IF NEW.embedding_queued_at IS NULL AND NEW.embedding_due_at IS NULL
       AND NEW.embedding_last_error IS NULL
       AND (NEW.embedding_status <> 'ready' OR NEW.embedding IS NULL
            OR NEW.embedding_model IS NULL) THEN
        NEW := study_embed._queued_from_before(NEW, CASE
            WHEN NEW.embedding_status IN ('none', 'stale', 'pending', 'failed')
                THEN NEW.embedding_status
            WHEN NEW.embedding IS NULL THEN 'none'
            ELSE 'stale' END);
    END IF;
    RETURN NEW;
END;
$$;

-- Fires only for a row with no bookkeeping that is not a complete ready row (every row
-- study-embed has written is ready with its vector and model, or waiting with
-- embedding_queued_at, or failed with its error): an update of any other row evaluates this
-- WHEN and nothing else.  Named to fire after study_embed_guard_update.
CREATE OR REPLACE TRIGGER study_embed_queue_unadopted
    BEFORE UPDATE ON public.study_questions
    FOR EACH ROW
    WHEN (OLD.embedding_queued_at IS NULL AND OLD.embedding_due_at IS NULL
          AND OLD.embedding_last_error IS NULL
          AND (OLD.embedding_status <> 'ready' OR OLD.embedding IS NULL
               OR OLD.embedding_model IS NULL))
    EXECUTE FUNCTION study_embed._queue_unadopted();
