-- uninstall.sql — what `Migrator.uninstall()` runs (the Alembic revision's downgrade), in one
-- transaction with a short lock_timeout.  It removes what study-embed added and nothing of the
-- app's: the seed's columns (embedding, embedding_status, embedding_updated_at,
-- embedding_model), their values and the HNSW index stay, so the app's own worker can take
-- over again.  It refuses, changing nothing, when an object of the app depends on study-embed.

-- Objects outside study_embed that depend on objects inside it (a view over
-- study_embed.similar_questions, say): DROP SCHEMA ... CASCADE would drop them silently.
DO $$
DECLARE
    dependents text;
BEGIN
    WITH inside AS (   -- study-embed's objects: in its schema, or its triggers on the app's table
        SELECT 'pg_proc'::regclass AS classid, p.oid AS objid FROM pg_proc p
        WHERE p.pronamespace = 'study_embed'::regnamespace
        UNION ALL
        SELECT 'pg_class'::regclass, c.oid FROM pg_class c
        WHERE c.relnamespace = 'study_embed'::regnamespace
        UNION ALL
        SELECT 'pg_type'::regclass, t.oid FROM pg_type t
        WHERE t.typnamespace = 'study_embed'::regnamespace
        UNION ALL
        SELECT 'pg_rewrite'::regclass, r.oid FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class
        WHERE c.relnamespace = 'study_embed'::regnamespace
        UNION ALL
        SELECT 'pg_constraint'::regclass, k.oid FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
        WHERE c.relnamespace = 'study_embed'::regnamespace
        UNION ALL
        SELECT 'pg_attrdef'::regclass, a.oid FROM pg_attrdef a JOIN pg_class c ON c.oid = a.adrelid
        WHERE c.relnamespace = 'study_embed'::regnamespace
        UNION ALL
        SELECT 'pg_trigger'::regclass, t.oid FROM pg_trigger t
        WHERE t.tgrelid = 'public.study_questions'::regclass AND t.tgname LIKE 'study\_embed\_%'
    )
    SELECT string_agg(DISTINCT pg_describe_object(d.classid, d.objid, d.objsubid), ', ')
    INTO dependents
    FROM pg_depend d
    JOIN inside ref ON ref.classid = d.refclassid AND ref.objid = d.refobjid
    WHERE d.deptype = 'n'
      AND NOT EXISTS (SELECT 1 FROM inside i WHERE i.classid = d.classid AND i.objid = d.objid);
    IF dependents IS NOT NULL THEN
        RAISE EXCEPTION 'study-embed is not removed: % depend(s) on it', dependents
            USING HINT = 'Drop or change them first (a downgrade of the revision that made '
                         'them), then downgrade again.';
    END IF;
END;
$$;

-- Rows claimed by a listener would stay `pending` for ever under the app's own worker.
-- (Before the triggers go: as the owner, this is a client's write, which the state machine
-- would refuse; so the triggers go first.)
DO $$
DECLARE
    t text;
BEGIN
    FOR t IN SELECT tgname FROM pg_trigger
             WHERE tgrelid = 'public.study_questions'::regclass AND NOT tgisinternal
               AND tgname LIKE 'study\_embed\_%' LOOP
        EXECUTE format('DROP TRIGGER %I ON public.study_questions', t);
    END LOOP;
END;
$$;
UPDATE public.study_questions
SET embedding_status = CASE WHEN embedding IS NULL THEN 'none' ELSE 'stale' END
WHERE embedding_status = 'pending';

-- everything in it (its functions and views read the columns below); nothing outside it
-- depends on it (checked above)
DROP SCHEMA study_embed CASCADE;

ALTER TABLE public.study_questions
    DROP CONSTRAINT IF EXISTS study_questions_embedding_status_check,
    DROP CONSTRAINT IF EXISTS study_questions_embedding_ready_check,
    DROP CONSTRAINT IF EXISTS study_questions_embedding_pending_check,
    DROP CONSTRAINT IF EXISTS study_questions_embedding_queued_check,
    DROP COLUMN IF EXISTS embedding_source_sha256,
    DROP COLUMN IF EXISTS embedding_claim_token,
    DROP COLUMN IF EXISTS embedding_due_at,
    DROP COLUMN IF EXISTS embedding_queued_at,
    DROP COLUMN IF EXISTS embedding_attempts,
    DROP COLUMN IF EXISTS embedding_last_error,
    -- a model change in progress (046_generations.sql): the other generation's columns, and
    -- with them their constraints and indexes
    DROP COLUMN IF EXISTS embedding_shadow,
    DROP COLUMN IF EXISTS embedding_shadow_status,
    DROP COLUMN IF EXISTS embedding_shadow_model,
    DROP COLUMN IF EXISTS embedding_shadow_updated_at,
    DROP COLUMN IF EXISTS embedding_shadow_source_sha256,
    DROP COLUMN IF EXISTS embedding_shadow_claim_token,
    DROP COLUMN IF EXISTS embedding_shadow_due_at,
    DROP COLUMN IF EXISTS embedding_shadow_queued_at,
    DROP COLUMN IF EXISTS embedding_shadow_attempts,
    DROP COLUMN IF EXISTS embedding_shadow_last_error,
    RESET (fillfactor);
-- (the queue index went with embedding_queued_at)
