-- 0010_duplicate_batches.sql — run once.  complete() queues the rows it wrote for the
-- near-duplicate pass as one row per call (the batch's ids), not one row per question: a heap
-- row and two index entries per embedded row were about 7 µs of PostgreSQL's CPU per row,
-- a tenth of its share (BENCHMARKS.md, "CPU per embedded row").  The pass takes the oldest
-- batches, whole or in part, up to its chunk (070_duplicates.sql).

CREATE TABLE study_embed.duplicate_batches (
    id            bigint GENERATED ALWAYS AS IDENTITY,
    question_ids  bigint[] NOT NULL CHECK (cardinality(question_ids) > 0),
    queued_at     timestamptz NOT NULL DEFAULT now()
);

-- what the pass had not examined yet, oldest first, in batches of the pass's chunk
INSERT INTO study_embed.duplicate_batches (question_ids, queued_at)
SELECT array_agg(q.question_id ORDER BY q.n), min(q.queued_at)
FROM (SELECT d.question_id, d.queued_at,
             row_number() OVER (ORDER BY d.queued_at, d.question_id) AS n
      FROM study_embed.duplicate_queue d) q
GROUP BY (q.n - 1) / 200
ORDER BY min(q.n);

DROP TABLE study_embed.duplicate_queue;
ALTER TABLE study_embed.duplicate_batches RENAME TO duplicate_queue;
ALTER SEQUENCE study_embed.duplicate_batches_id_seq RENAME TO duplicate_queue_id_seq;
ALTER TABLE study_embed.duplicate_queue
    ADD CONSTRAINT duplicate_queue_pkey PRIMARY KEY (id);
COMMENT ON TABLE study_embed.duplicate_queue IS
    'Questions embedded since the last near-duplicate pass (study_embed.detect_duplicates), '
    'a row per complete() call.';
