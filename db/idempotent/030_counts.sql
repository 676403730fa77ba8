-- 030_counts.sql — re-runnable.  The exact status counts behind study_embed.status: who
-- records a delta (the pipeline's functions per batch, a client's row trigger, a DELETE or
-- TRUNCATE per statement), how the deltas are folded (compact_counts) and recomputed (recount).

-- ------------------------------------------------------------------------------------------
-- Exact status counts
-- ------------------------------------------------------------------------------------------
--
-- study_embed.status_counts receives signed deltas, appended (writers never contend on a
-- counter row) and folded by study_embed.compact_counts().  Who records them:
--   * the pipeline's functions, one INSERT per call for the whole batch (_count_moves);
--   * a client's INSERT, per row; its UPDATE, per row, and only for a row whose status or soft
--     deletion changed (the trigger's WHEN clause): an update of any other column runs nothing;
--   * a client's DELETE, per statement (a transition table: a TOAST pointer at most per row).

-- (The helpers the pipeline's functions call once per batch are plpgsql: a SQL function that is
-- not inlined is parsed and planned again at every call, a plpgsql one plans once per session;
-- BENCHMARKS.md, "CPU per embedded row".)
CREATE OR REPLACE FUNCTION study_embed._count_moves(was text[], was_deleted boolean[],
                                                   now_is text[], now_deleted boolean[])
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO study_embed.status_counts (status, deleted, n)
    SELECT m.status, m.deleted, sum(m.d)
    FROM (SELECT o.status, o.deleted, -1 AS d
          FROM unnest(_count_moves.was, _count_moves.was_deleted) AS o(status, deleted)
          UNION ALL
          SELECT c.status, c.deleted, 1
          FROM unnest(_count_moves.now_is, _count_moves.now_deleted) AS c(status, deleted)) m
    GROUP BY m.status, m.deleted
    HAVING sum(m.d) <> 0;
END;
$$;
COMMENT ON FUNCTION study_embed._count_moves(text[], boolean[], text[], boolean[]) IS
    'Record the status-count deltas of rows that moved from (was, was_deleted) to '
    '(now_is, now_deleted).';

-- n live rows moved from one status to another (the batch functions that move one kind).
CREATE OR REPLACE FUNCTION study_embed._count_live_moves(was text, now_is text, n bigint)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF _count_live_moves.n <> 0 AND _count_live_moves.was <> _count_live_moves.now_is THEN
        INSERT INTO study_embed.status_counts (status, deleted, n)
        VALUES (_count_live_moves.was, false, -_count_live_moves.n),
               (_count_live_moves.now_is, false, _count_live_moves.n);
    END IF;
END;
$$;

-- An array as long as like_array, every element value (for _count_moves).
CREATE OR REPLACE FUNCTION study_embed._all(like_array anyarray, value anycompatible)
RETURNS anycompatiblearray
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN array_fill(value, ARRAY[coalesce(cardinality(like_array), 0)]);
END;
$$;

-- A client's INSERT, or UPDATE of a row whose status or soft deletion changed (row level:
-- the trigger's WHEN clause keeps every other update out; the pipeline's own updates are
-- counted by its functions).  Row level for INSERT too: an app inserts a row per statement,
-- and a transition table costs that statement more than the row does (BENCHMARKS.md).
-- SECURITY DEFINER (owned by study_embed_pipeline, 095_privileges.sql): the app's role has no
-- privilege on the counters.
CREATE OR REPLACE FUNCTION study_embed._count_row()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        INSERT INTO study_embed.status_counts (status, deleted, n)
        VALUES (OLD.embedding_status, OLD.deleted_at IS NOT NULL, -1);
    END IF;
    INSERT INTO study_embed.status_counts (status, deleted, n)
    VALUES (NEW.embedding_status, NEW.deleted_at IS NOT NULL, 1);
    IF NEW.deleted_at IS NULL AND NEW.embedding_status <> 'ready'
       AND NEW.embedding_due_at <= now() THEN
        PERFORM study_embed._wake(lower(TG_OP));
    END IF;
    RETURN NULL;
END;
$$;

-- A client's DELETE or TRUNCATE (statement level; deleted rows carry a TOAST pointer at most).
-- SECURITY DEFINER, as above.
CREATE OR REPLACE FUNCTION study_embed._count_statement()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO study_embed.status_counts (status, deleted, n)
        SELECT r.embedding_status, r.deleted_at IS NOT NULL, -count(*)
        FROM old_rows r GROUP BY 1, 2;
    ELSIF TG_OP = 'TRUNCATE' THEN
        DELETE FROM study_embed.status_counts;
    END IF;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE TRIGGER study_embed_count_insert
    AFTER INSERT ON public.study_questions
    FOR EACH ROW EXECUTE FUNCTION study_embed._count_row();
-- (Any UPDATE, not UPDATE OF the columns: a BEFORE trigger may change the status of a row whose
-- status the statement does not name, study_embed_queue_unadopted in 010.)
CREATE OR REPLACE TRIGGER study_embed_count_update
    AFTER UPDATE ON public.study_questions
    FOR EACH ROW
    WHEN (current_user <> 'study_embed_pipeline'::name
          AND (OLD.embedding_status IS DISTINCT FROM NEW.embedding_status
               OR (OLD.deleted_at IS NULL) <> (NEW.deleted_at IS NULL)))
    EXECUTE FUNCTION study_embed._count_row();
CREATE OR REPLACE TRIGGER study_embed_after_delete
    AFTER DELETE ON public.study_questions REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION study_embed._count_statement();
CREATE OR REPLACE TRIGGER study_embed_after_truncate
    AFTER TRUNCATE ON public.study_questions
    FOR EACH STATEMENT EXECUTE FUNCTION study_embed._count_statement();

-- what earlier versions counted with (transition tables on every INSERT and UPDATE); dropped
-- only where they exist, since DROP TRIGGER locks the table ACCESS EXCLUSIVE even when not
DO $$
DECLARE
    t text;
BEGIN
    FOR t IN SELECT tgname FROM pg_trigger
             WHERE tgrelid = 'public.study_questions'::regclass
               AND tgname IN ('study_embed_after_insert', 'study_embed_after_update') LOOP
        EXECUTE format('DROP TRIGGER %I ON public.study_questions', t);
    END LOOP;
END;
$$;
DROP FUNCTION IF EXISTS study_embed._after_statement();
DROP FUNCTION IF EXISTS study_embed._count_row_update();

-- SECURITY DEFINER (owned by study_embed_pipeline): the tick and an idle listener run it.
CREATE OR REPLACE FUNCTION study_embed.compact_counts()
RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    WITH gone AS (DELETE FROM study_embed.status_counts RETURNING status, deleted, n)
    INSERT INTO study_embed.status_counts (status, deleted, n)
    SELECT status, deleted, sum(n) FROM gone GROUP BY status, deleted HAVING sum(n) <> 0;
END;
COMMENT ON FUNCTION study_embed.compact_counts() IS
    'Fold the status-count deltas into one row per (status, deleted).';

-- Recompute the counts from the table.  In a REPEATABLE READ (or SERIALIZABLE) transaction it
-- blocks no writer: it counts its snapshot and deletes only the deltas that snapshot sees, so
-- the deltas of transactions that commit later stay and add to the new base.  (A concurrent
-- compact_counts makes it fail with a serialization error: run it again.)  In READ COMMITTED it
-- keeps writers out while it counts.  `make migrate` runs it, in REPEATABLE READ, after it
-- installs the triggers.
CREATE OR REPLACE FUNCTION study_embed.recount()
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF current_setting('transaction_isolation') = 'read committed' THEN
        LOCK TABLE public.study_questions IN SHARE MODE;
    END IF;
    DELETE FROM study_embed.status_counts;
    INSERT INTO study_embed.status_counts (status, deleted, n)
    SELECT embedding_status, deleted_at IS NOT NULL, count(*)
    FROM public.study_questions GROUP BY 1, 2;
END;
$$;
COMMENT ON FUNCTION study_embed.recount() IS
    'Recompute study_embed.status_counts from study_questions (REPEATABLE READ: without blocking writers).';
