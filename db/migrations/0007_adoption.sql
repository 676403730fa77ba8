-- 0007_adoption.sql — run once.  Adopting a bank that another worker embedded, without
-- re-embedding it and without rewriting its rows.
--
-- A bank written before study-embed (the seed's own worker) holds rows with none of the
-- pipeline's bookkeeping.  `migrate` walks them in bounded batches (study_embed.adopt(),
-- 045_adoption.sql): a `ready` row whose vector was made by the configured model is adopted as
-- it is, every other row is queued.
--
-- An adopted row is not rewritten.  Rewriting a row whose page has no room for a second
-- version (a restored or bulk-loaded table is packed full) is not HOT: it inserts the row's
-- vector into the HNSW graph again (about 5 ms at 1024 dimensions, measured: 20,000 rows took
-- 101 s) and leaves a dead graph element for the next VACUUM to repair.  So the hash of the
-- text an adopted vector came from is recorded here, beside the row, instead of in its
-- embedding_source_sha256; the row's own hash replaces it when the row is next embedded.

CREATE TABLE study_embed.adopted_source (
    question_id    bigint PRIMARY KEY REFERENCES public.study_questions (id) ON DELETE CASCADE,
    source_sha256  bytea NOT NULL,
    adopted_at     timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE study_embed.adopted_source IS
    'The source-text hash of rows adopted as ready from a bank embedded before study-embed '
    '(their own embedding_source_sha256 stays NULL until they are next embedded).';

-- A ready row has its hash in the row (complete()) or here (adopt()): the CHECK can no longer
-- see it, _check_consistent() does.  (0001 adds this form now; a database that ran its earlier
-- version gets it here.)
ALTER TABLE public.study_questions
    DROP CONSTRAINT study_questions_embedding_ready_check,
    ADD CONSTRAINT study_questions_embedding_ready_check
        CHECK (embedding_status <> 'ready'
               OR (embedding IS NOT NULL AND embedding_model IS NOT NULL
                   AND embedding_claim_token IS NULL)) NOT VALID;

-- The walk's progress: crash-safe (the cursor moves in the transaction of its batch) and
-- resumable by the next `migrate`.
CREATE TABLE study_embed.adoption (
    singleton    boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    model        text,                  -- the model whose vectors are kept (NULL: not started)
    reembed      boolean NOT NULL DEFAULT false,  -- keep no vector: queue every row
    after_id     bigint NOT NULL DEFAULT 0,       -- rows up to this id are done
    started_at   timestamptz,
    finished_at  timestamptz
);
INSERT INTO study_embed.adoption DEFAULT VALUES;
COMMENT ON TABLE study_embed.adoption IS
    'Progress of the adoption of rows written before study-embed (one row).';

CREATE TABLE study_embed.adoption_outcomes (
    outcome  text PRIMARY KEY,
    n        bigint NOT NULL
);
COMMENT ON TABLE study_embed.adoption_outcomes IS
    'What the adoption did, by outcome (adopted, queued and why, already study-embed''s).';
