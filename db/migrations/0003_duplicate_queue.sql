-- 0003_duplicate_queue.sql — run once.  Near-duplicate detection leaves the write path:
-- complete() only queues the rows it wrote; study_embed.detect_duplicates() (run by tick() and
-- by an idle listener) compares them with their neighbours, within a time budget.

CREATE TABLE IF NOT EXISTS study_embed.duplicate_queue (
    question_id  bigint PRIMARY KEY,
    queued_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS duplicate_queue_queued_at ON study_embed.duplicate_queue (queued_at);
COMMENT ON TABLE study_embed.duplicate_queue IS
    'Questions embedded since the last near-duplicate pass (study_embed.detect_duplicates).';
