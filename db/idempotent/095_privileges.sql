-- 095_privileges.sql — re-runnable.  Least privilege for every role (000_roles.sql; the threat
-- model is in the README).
--
--   study_embed_pipeline  owns the SECURITY DEFINER functions; may read study_questions and
--                         write only the pipeline's columns, the counters and the duplicate
--                         tables.  Its functions never change a question's text.
--   study_embed_listener  the queue functions and the status views; no table, no question
--                         content except the rendered text a claim hands out.
--   study_embed_app       the search functions (SECURITY INVOKER: the caller also needs SELECT
--                         on study_questions) and dismissing a pair of its user.
--   PUBLIC                USAGE on the schema and the pure helpers the triggers call as the
--                         writing client; nothing else.
--   (the table's owner)   begin_generation, switch_generation, drop_generation: DDL on
--                         study_questions, which only its owner may do (`study-embed model`).
--
-- psql variables: :"vector_schema".

-- This file states every grant: start from none (PostgreSQL grants EXECUTE to PUBLIC on new
-- functions, and an earlier version of this file granted more than it does now).
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA study_embed
    FROM PUBLIC, study_embed_pipeline, study_embed_listener, study_embed_app;
REVOKE ALL ON ALL TABLES IN SCHEMA study_embed
    FROM PUBLIC, study_embed_pipeline, study_embed_listener, study_embed_app;
REVOKE ALL ON public.study_questions FROM study_embed_pipeline;
GRANT USAGE ON SCHEMA study_embed TO PUBLIC;
-- Pure helpers that the triggers call as the writing client (any role that may write
-- study_questions): they read nothing and write nothing.
GRANT EXECUTE ON FUNCTION
    study_embed.render_question(text, text, text, text, text),
    study_embed.text_sha256(text),
    study_embed.transition_allowed(text, text, text),
    study_embed.pipeline_role(),
    study_embed._actor(),
    study_embed._vectors_differ(:"vector_schema".vector, :"vector_schema".vector),
    study_embed._cosine_distance(:"vector_schema".vector, :"vector_schema".vector),
    study_embed.answer_key(text, text, text, text, integer),
    study_embed.channel(),
    study_embed._inconsistency(bigint, text, boolean, text, bytea, uuid, timestamptz, timestamptz,
                               text),
    study_embed._guard_insert(),
    study_embed._guard_update(),
    study_embed._queued_from_before(public.study_questions, text),
    study_embed._queue_unadopted(),
    study_embed._adopted(bigint),
    study_embed._shadow_inconsistency(text, boolean, text, uuid, timestamptz, timestamptz, text),
    study_embed._guard_shadow_insert(),
    study_embed._guard_shadow()
TO PUBLIC;

-- ---------------------------------------------------------------- study_embed_pipeline
-- What the definer functions touch, and nothing more.  (USAGE on the schema lets the migrator
-- hand it the functions below; CREATE is granted for the hand-over only and taken back.)
GRANT USAGE, CREATE ON SCHEMA study_embed TO study_embed_pipeline;
GRANT SELECT ON public.study_questions TO study_embed_pipeline;
GRANT UPDATE (embedding, embedding_status, embedding_updated_at, embedding_model,
              embedding_source_sha256, embedding_claim_token, embedding_due_at,
              embedding_queued_at, embedding_attempts, embedding_last_error)
    ON public.study_questions TO study_embed_pipeline;
\if :study_embed_has_shadow
GRANT UPDATE (embedding_shadow, embedding_shadow_status, embedding_shadow_updated_at,
              embedding_shadow_model, embedding_shadow_source_sha256,
              embedding_shadow_claim_token, embedding_shadow_due_at,
              embedding_shadow_queued_at, embedding_shadow_attempts,
              embedding_shadow_last_error)
    ON public.study_questions TO study_embed_pipeline;
\endif
GRANT SELECT ON study_embed.settings, study_embed.model_thresholds, study_embed.generations,
    study_embed.status TO study_embed_pipeline;
GRANT SELECT, INSERT, DELETE ON study_embed.status_counts TO study_embed_pipeline;
GRANT SELECT, INSERT, UPDATE, DELETE ON study_embed.duplicate_queue TO study_embed_pipeline;
GRANT SELECT, INSERT, UPDATE, DELETE ON study_embed.duplicate_candidates TO study_embed_pipeline;
GRANT SELECT, INSERT, DELETE ON study_embed.adopted_source TO study_embed_pipeline;
GRANT SELECT, INSERT, UPDATE ON study_embed.adoption, study_embed.adoption_outcomes
    TO study_embed_pipeline;
GRANT EXECUTE ON FUNCTION
    study_embed._set_actor(text),
    study_embed._check_batch(text, text[], integer[]),
    study_embed._check_batch_size(text, integer, integer),
    study_embed._claim_is_current(text, uuid, uuid),
    study_embed.compact_counts(),
    study_embed._tune_hnsw_scan(integer),
    study_embed._record_duplicates(bigint[]),
    study_embed.detect_duplicates(interval, integer),
    study_embed._count_moves(text[], boolean[], text[], boolean[]),
    study_embed._all(anyarray, anycompatible),
    study_embed._count_live_moves(text, text, bigint),
    study_embed._wake(text),
    study_embed.sleep_lock_key(),
    study_embed._claimable(),
    study_embed._requeue(text, text, bigint, integer),
    study_embed._from_before(public.study_questions),
    study_embed.listener_wake(),
    study_embed._has_shadow(),
    study_embed._shadow(text),
    study_embed.served_model()          -- its own, but the REVOKE above took it on a re-run
TO study_embed_pipeline;

ALTER FUNCTION study_embed.claim(integer, interval) OWNER TO study_embed_pipeline;
ALTER FUNCTION study_embed.complete(bigint[], uuid[], :"vector_schema".vector[], text)
    OWNER TO study_embed_pipeline;
ALTER FUNCTION study_embed.fail(bigint[], uuid[], text[], boolean) OWNER TO study_embed_pipeline;
ALTER FUNCTION study_embed.release(bigint[], uuid[], interval, text) OWNER TO study_embed_pipeline;
ALTER FUNCTION study_embed.requeue_model(text, bigint, integer) OWNER TO study_embed_pipeline;
ALTER FUNCTION study_embed.requeue_changed_text(bigint, integer) OWNER TO study_embed_pipeline;
ALTER FUNCTION study_embed.retry_failed(bigint[], integer) OWNER TO study_embed_pipeline;
ALTER FUNCTION study_embed.listener_sleep(integer) OWNER TO study_embed_pipeline;
ALTER FUNCTION study_embed.compact_counts() OWNER TO study_embed_pipeline;
ALTER FUNCTION study_embed.tick() OWNER TO study_embed_pipeline;
ALTER FUNCTION study_embed.embedding_dimension() OWNER TO study_embed_pipeline;
ALTER FUNCTION study_embed.detect_duplicates(interval, integer) OWNER TO study_embed_pipeline;
ALTER FUNCTION study_embed.dismiss_duplicate(bigint, bigint, bigint) OWNER TO study_embed_pipeline;
ALTER FUNCTION study_embed._count_statement() OWNER TO study_embed_pipeline;
ALTER FUNCTION study_embed._count_row() OWNER TO study_embed_pipeline;
ALTER FUNCTION study_embed._adopted(bigint) OWNER TO study_embed_pipeline;
ALTER FUNCTION study_embed.adopt(text, boolean, integer) OWNER TO study_embed_pipeline;
ALTER FUNCTION study_embed.served_model() OWNER TO study_embed_pipeline;
ALTER FUNCTION study_embed.generation_status() OWNER TO study_embed_pipeline;
ALTER FUNCTION study_embed.generation_models() OWNER TO study_embed_pipeline;
ALTER FUNCTION study_embed.claim_shadow(integer, interval) OWNER TO study_embed_pipeline;
ALTER FUNCTION study_embed.complete_shadow(bigint[], uuid[], :"vector_schema".vector[], text)
    OWNER TO study_embed_pipeline;
ALTER FUNCTION study_embed.fail_shadow(bigint[], uuid[], text[], boolean)
    OWNER TO study_embed_pipeline;
ALTER FUNCTION study_embed.release_shadow(bigint[], uuid[], interval, text)
    OWNER TO study_embed_pipeline;
REVOKE CREATE ON SCHEMA study_embed FROM study_embed_pipeline;
-- (ALTER ... OWNER keeps the grants made above; the owner has EXECUTE on its own functions.)

-- ---------------------------------------------------------------- study_embed_listener
GRANT EXECUTE ON FUNCTION
    study_embed.claim(integer, interval),
    study_embed.complete(bigint[], uuid[], :"vector_schema".vector[], text),
    study_embed.fail(bigint[], uuid[], text[], boolean),
    study_embed.release(bigint[], uuid[], interval, text),
    study_embed.requeue_model(text, bigint, integer),
    study_embed.tick(),
    study_embed.detect_duplicates(interval, integer),
    study_embed.compact_counts(),
    study_embed.embedding_dimension(),
    study_embed.listener_sleep(integer),
    study_embed.listener_wake(),
    study_embed.claim_shadow(integer, interval),
    study_embed.complete_shadow(bigint[], uuid[], :"vector_schema".vector[], text),
    study_embed.fail_shadow(bigint[], uuid[], text[], boolean),
    study_embed.release_shadow(bigint[], uuid[], interval, text),
    study_embed.served_model(),
    study_embed.generation_models(),
    study_embed.generation_status()
TO study_embed_listener;
GRANT SELECT ON study_embed.status, study_embed.failures TO study_embed_listener;

-- ---------------------------------------------------------------- study_embed_app
-- The search functions run as the caller (SECURITY INVOKER): the caller also needs SELECT on
-- study_questions, which the listener's role does not have.  duplicate_candidates holds ids
-- and scores only; the texts come through duplicate_pairs, which runs with the caller's rights.
GRANT EXECUTE ON FUNCTION
    study_embed._tune_hnsw_scan(integer),
    study_embed._nearest(bigint, :"vector_schema".vector, integer, bigint, bigint, boolean),
    study_embed.search_questions(bigint, :"vector_schema".vector, integer, bigint),
    study_embed.similar_questions(bigint, bigint, integer, boolean),
    study_embed.explanation_context(bigint, bigint, integer),
    study_embed.find_duplicates(bigint, :"vector_schema".vector, real, text),
    study_embed.search_questions_hybrid(bigint, :"vector_schema".vector, text, integer, bigint),
    study_embed._words_query(text),
    study_embed.wrong_answer_clusters(bigint, integer, real, real),
    study_embed._average_linkage(:"vector_schema".vector[], text[], real,
                                 :"vector_schema".sparsevec[], real),
    study_embed._word_bucket(text),
    study_embed._word_vector(integer[]),
    study_embed._representatives(:"vector_schema".vector[], integer[]),
    study_embed._cluster_word(text),
    study_embed._unit(:"vector_schema".vector),
    study_embed._vector_add(:"vector_schema".vector, :"vector_schema".vector),
    study_embed._inner_product(:"vector_schema".vector, :"vector_schema".vector),
    study_embed._inner_product(:"vector_schema".sparsevec, :"vector_schema".sparsevec),
    study_embed._with_words(:"vector_schema".vector, :"vector_schema".sparsevec,
                            double precision),
    study_embed.dismiss_duplicate(bigint, bigint, bigint),
    study_embed._dims(:"vector_schema".vector),
    study_embed.embedding_dimension(),
    study_embed.served_model(),
    study_embed.generation_models(),
    study_embed.generation_status()
TO study_embed_app;
GRANT SELECT ON study_embed.settings, study_embed.model_thresholds, study_embed.duplicate_pairs,
    study_embed.duplicate_candidates, study_embed.status
    TO study_embed_app;
