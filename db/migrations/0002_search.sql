-- 0002_search.sql — run once.  What the search features keep.

ALTER TABLE study_embed.settings
    -- cosine similarity at or above which two questions of one user are near-duplicates
    ADD COLUMN IF NOT EXISTS duplicate_threshold real NOT NULL DEFAULT 0.92
        CHECK (duplicate_threshold > 0 AND duplicate_threshold <= 1),
    -- how many nearest neighbours a newly embedded question is compared with
    ADD COLUMN IF NOT EXISTS duplicate_neighbours smallint NOT NULL DEFAULT 5
        CHECK (duplicate_neighbours BETWEEN 1 AND 100);

-- Near-duplicate pairs of one user's questions, found when a question becomes ready.
-- A pair is stored once, lower id first.
CREATE TABLE IF NOT EXISTS study_embed.duplicate_candidates (
    question_id    bigint NOT NULL REFERENCES public.study_questions (id) ON DELETE CASCADE,
    duplicate_of   bigint NOT NULL REFERENCES public.study_questions (id) ON DELETE CASCADE,
    user_id        bigint NOT NULL,
    similarity     real NOT NULL,
    detected_at    timestamptz NOT NULL DEFAULT now(),
    dismissed_at   timestamptz,
    PRIMARY KEY (question_id, duplicate_of),
    CHECK (question_id < duplicate_of)
);
CREATE INDEX IF NOT EXISTS duplicate_candidates_user
    ON study_embed.duplicate_candidates (user_id) WHERE dismissed_at IS NULL;
CREATE INDEX IF NOT EXISTS duplicate_candidates_duplicate_of
    ON study_embed.duplicate_candidates (duplicate_of);
COMMENT ON TABLE study_embed.duplicate_candidates IS
    'Near-duplicate question pairs within one user''s bank (cosine similarity >= '
    'settings.duplicate_threshold), recorded when a question becomes ready.  Set dismissed_at '
    'to close a pair.';
