-- 000_roles.sql — re-runnable.  The roles of study-embed (the threat model is in the README).
--
--   study_embed_pipeline  NOLOGIN.  Owns the SECURITY DEFINER functions (claim, complete, fail,
--                         release, requeue, tick, ...) and has only the privileges they need.
--                         The state machine trusts a transition reserved to the pipeline only
--                         when it runs as this role (current_user inside those functions): a
--                         session setting can never stand in for it.  Nobody logs in as it;
--                         the migrating role is made a member so that it can replace the
--                         functions it owns.
--   study_embed_listener  NOLOGIN.  Grant it to the listener's login: it may call the queue
--                         functions and read the status views, nothing else.
--   study_embed_app       NOLOGIN.  Grant it to the app's role (which also needs SELECT on the
--                         app's tables): the search functions, run with the caller's rights.
--
-- Creating roles needs CREATEROLE (or a superuser) the first time only.

DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['study_embed_pipeline', 'study_embed_listener', 'study_embed_app'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN NOINHERIT', r);
        END IF;
    END LOOP;
    -- The migrator replaces the pipeline's functions on every run: it must be a member of
    -- their owner.  (A superuser needs no membership.)
    IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)
       AND NOT pg_catalog.pg_has_role(current_user, 'study_embed_pipeline', 'USAGE') THEN
        EXECUTE pg_catalog.format('GRANT study_embed_pipeline TO %I', current_user);
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE EXCEPTION 'cannot create or grant role %: %', r, SQLERRM
        USING HINT = 'Run make migrate once as a user with CREATEROLE, or create the roles '
                     'study_embed_pipeline, study_embed_listener and study_embed_app (NOLOGIN) '
                     'yourself and grant study_embed_pipeline to the migrating role.';
END;
$$;
COMMENT ON ROLE study_embed_pipeline IS
    'study-embed: owns the queue functions (SECURITY DEFINER); the only role whose updates may '
    'make pipeline transitions.  No login.';
COMMENT ON ROLE study_embed_listener IS
    'study-embed listener: may claim, complete, fail and release embedding work; nothing else.';
COMMENT ON ROLE study_embed_app IS
    'study-embed search functions (grant it to the app''s role, which also needs SELECT on '
    'study_questions): similar questions, duplicates, explanation context, clusters.';
