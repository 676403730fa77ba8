-- 040_privileges.sql — re-runnable.  Least privilege for the listener and the app.
--
-- study_embed_listener (NOLOGIN; grant it to the login role the listener runs as) may call the
-- queue functions and read the status views, and nothing else: no table of the app, no question
-- content except the rendered text a claim hands out.

DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['study_embed_listener', 'study_embed_app'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE EXCEPTION 'cannot create role %: %', r, SQLERRM
        USING HINT = 'Run make migrate once as a user with CREATEROLE, or create the roles '
                     'study_embed_listener and study_embed_app (NOLOGIN) yourself.';
END;
$$;
COMMENT ON ROLE study_embed_app IS
    'study-embed search functions (grant it to the app''s role, which also needs SELECT on '
    'study_questions): similar questions, duplicates, explanation context, clusters.';
COMMENT ON ROLE study_embed_listener IS
    'study-embed listener: may claim, complete, fail and release embedding work; nothing else.';

-- PostgreSQL grants EXECUTE to PUBLIC on new functions: take it back for the whole schema.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA study_embed FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA study_embed FROM PUBLIC;
GRANT USAGE ON SCHEMA study_embed TO PUBLIC;
-- Harmless helpers anyone may use (and that triggers run as the writing client).
GRANT EXECUTE ON FUNCTION
    study_embed.render_question(text, text, text, text, text),
    study_embed.text_sha256(text),
    study_embed.transition_allowed(text, text, text),
    study_embed.channel(),
    study_embed._set_actor(text),
    study_embed._check_consistent(public.study_questions, boolean),
    study_embed._guard_insert(),
    study_embed._guard_update(),
    study_embed._after_statement()
TO PUBLIC;

GRANT EXECUTE ON FUNCTION
    study_embed.claim(integer, interval),
    study_embed.complete(bigint[], uuid[], :"vector_schema".vector[], text),
    study_embed.fail(bigint[], uuid[], text[], boolean),
    study_embed.release(bigint[], uuid[], interval, text),
    study_embed.requeue_model(text),
    study_embed.tick(),
    study_embed.detect_duplicates(interval, integer),
    study_embed.embedding_dimension()
TO study_embed_listener;
GRANT SELECT ON study_embed.status, study_embed.failures TO study_embed_listener;

-- The search functions run as the caller (SECURITY INVOKER): the caller also needs SELECT on
-- study_questions, which the listener's role does not have.
GRANT EXECUTE ON FUNCTION
    study_embed._tune_hnsw_scan(integer),
    study_embed._nearest(bigint, :"vector_schema".vector, integer, bigint, bigint, boolean),
    study_embed.search_questions(bigint, :"vector_schema".vector, integer, bigint),
    study_embed.similar_questions(bigint, integer, boolean),
    study_embed.explanation_context(bigint, integer),
    study_embed.find_duplicates(bigint, :"vector_schema".vector, real),
    study_embed.wrong_answer_clusters(bigint, integer, real)
TO study_embed_app;
GRANT SELECT ON study_embed.settings, study_embed.duplicate_pairs TO study_embed_app;
GRANT SELECT, UPDATE (dismissed_at) ON study_embed.duplicate_candidates TO study_embed_app;
