-- 0004_embedding_inline.sql — run once.  Keep the vector in the table row, not in TOAST.
--
-- pgvector's type is stored EXTERNAL: a 1024-dim vector (4,104 bytes) is over the 2 kB TOAST
-- threshold, so every row's vector went to the TOAST table and every read of it cost a TOAST
-- index lookup and several chunk pages.  The exact per-user search (the planner's choice for a
-- user who owns a small share of the table) reads all of that user's vectors: on 100,000 x 1024
-- with a 900-question user, 3,918 buffer hits and ~7-10 ms at the median with TOAST, 902 hits
-- and ~3 ms inline (BENCHMARKS.md).  The app's ORM, which loads the column with every row, gains
-- the same way, and complete() no longer writes a TOAST value and its index entry per row.
--
-- PLAIN keeps the value in the row; the tuple still fits a page because the text columns
-- (EXTENDED) are compressed or moved out first.  Above ~1,800 dimensions a row could no longer
-- fit, so such a column keeps pgvector's default.  Rows already written keep their TOAST copy
-- until they are next written (a re-embedding, or VACUUM FULL).
DO $$
DECLARE
    dim integer := (SELECT atttypmod FROM pg_attribute
                    WHERE attrelid = 'public.study_questions'::regclass
                      AND attname = 'embedding');
BEGIN
    IF dim BETWEEN 1 AND 1800 THEN
        ALTER TABLE public.study_questions ALTER COLUMN embedding SET STORAGE PLAIN;
    ELSE
        RAISE NOTICE 'study_questions.embedding has % dimensions: left in TOAST storage', dim;
    END IF;
END;
$$;
