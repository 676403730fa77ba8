-- 090_tick.sql — re-runnable.  The safety net under NOTIFY, run by pg_cron every minute
-- (db/cron.sql).  It calls into every earlier file, so it comes after them.

-- What pg_cron runs every minute: the safety net under NOTIFY.  Folds the status-count deltas,
-- runs the near-duplicate pass, and wakes the listeners when anything is claimable.
CREATE OR REPLACE FUNCTION study_embed.tick()
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    claimable boolean;
BEGIN
    PERFORM study_embed.compact_counts();
    PERFORM study_embed.detect_duplicates();
    claimable := study_embed._claimable();
    IF claimable THEN
        PERFORM pg_notify(study_embed.channel(), 'tick');
    END IF;
    RETURN claimable;
END;
$$;
COMMENT ON FUNCTION study_embed.tick() IS
    'Run by pg_cron every minute: NOTIFY the listeners if anything is claimable.';
