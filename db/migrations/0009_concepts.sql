-- 0009_concepts.sql — run once.  What a learner sees: wrong-answer clusters by concept and
-- explanation context that helps or none (make eval measures both; BENCHMARKS.md).
--
-- 1. A relevance floor per model: explanation_context() returns no question less similar than
--    it (NULL: no floor).
-- 2. e5's cluster threshold, chosen again for wrong_answer_clusters' average linkage against
--    the concepts of eval/set.yaml (0.94 was chosen for greedy stars against near-duplicate
--    groups); a value an operator changed is kept.

ALTER TABLE study_embed.model_thresholds
    ADD COLUMN IF NOT EXISTS context_threshold real
        CHECK (context_threshold > 0 AND context_threshold <= 1);
COMMENT ON COLUMN study_embed.model_thresholds.context_threshold IS
    'explanation_context() returns no question less similar than this (NULL: no floor).';

UPDATE study_embed.model_thresholds
SET cluster_threshold = 0.88, context_threshold = 0.91,
    chosen_by = chosen_by || '; 2026-12-07, make eval against the concepts of eval/set.yaml: '
        'clusters by average linkage at 0.88 (adjusted Rand index, singletons), the relevance '
        'floor for explanation context at 0.91 (precision@3, empty context for questions '
        'without a related one)'
WHERE model = 'intfloat/multilingual-e5-small' AND cluster_threshold = 0.94::real;

UPDATE study_embed.model_thresholds
SET context_threshold = 0.60,
    chosen_by = chosen_by || '; relevance floor 0.60 for explanation context: not measured '
        'here either (bge-m3 scores unrelated questions far lower than e5 does): check it with '
        'make eval against TEI'
WHERE model = 'BAAI/bge-m3' AND context_threshold IS NULL;
