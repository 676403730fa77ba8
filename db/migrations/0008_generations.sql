-- 0008_generations.sql — run once.  Which model's vectors search serves.
--
-- A model change builds the next model's vectors beside the served ones (the shadow slot:
-- embedding_shadow, embedding_shadow_status, ... added by study_embed.begin_generation() and
-- dropped by study_embed.drop_generation(), 046_generations.sql).  This table says which model
-- and dimension each slot holds: every search compares the served slot's vectors with a query
-- of the served model, and nothing else.
--
-- The served model of an existing bank is the model that embedded most of its ready rows (a
-- listener could write any model's name before this migration); of an empty bank, the model
-- `migrate` is given (EMBEDDING_MODEL).

CREATE TABLE study_embed.generations (
    slot        text PRIMARY KEY CHECK (slot IN ('served', 'shadow')),
    model       text NOT NULL CHECK (model <> '' AND length(model) <= 120),
    dimension   integer NOT NULL CHECK (dimension BETWEEN 1 AND 16000),
    -- a shadow generation that was served before (kept for a switch back), not a next one
    was_served  boolean NOT NULL DEFAULT false,
    since       timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE study_embed.generations IS
    'The embedding generations: served (embedding, embedding_status, ...: what every search '
    'compares) and, during a model change, shadow (embedding_shadow, embedding_shadow_status, '
    '...: the next model being built, or the previous one kept for a switch back).';

INSERT INTO study_embed.generations (slot, model, dimension)
SELECT 'served',
       coalesce((SELECT q.embedding_model FROM public.study_questions q
                 WHERE q.embedding_status = 'ready' AND q.deleted_at IS NULL
                   AND q.embedding_model IS NOT NULL AND q.embedding IS NOT NULL
                 GROUP BY q.embedding_model ORDER BY count(*) DESC, 1 LIMIT 1),
                :'embedding_model'),
       (SELECT a.atttypmod FROM pg_attribute a
        WHERE a.attrelid = 'public.study_questions'::regclass AND a.attname = 'embedding'
          AND NOT a.attisdropped);
