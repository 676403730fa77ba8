-- 040_privileges.sql — re-runnable.  Least privilege for the listener.
--
-- study_embed_listener (NOLOGIN; grant it to the login role the listener runs as) may call the
-- queue functions and read the status views, and nothing else: no table of the app, no question
-- content except the rendered text a claim hands out.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'study_embed_listener') THEN
        CREATE ROLE study_embed_listener NOLOGIN;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE EXCEPTION 'cannot create role study_embed_listener: %', SQLERRM
        USING HINT = 'Run make migrate as a user with CREATEROLE once, or create the role '
                     '(NOLOGIN) yourself.';
END;
$$;
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
    study_embed._check_consistent(public.study_questions),
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
    study_embed.embedding_dimension()
TO study_embed_listener;
GRANT SELECT ON study_embed.status, study_embed.failures TO study_embed_listener;
